//! The workdir: its lock, the `STORE` file, the per-core engines, the initial
//! region layout, and the route table (hash slot -> region -> core).
//!
//! ```text
//! <workdir>/LOCK          flock'ed while a server runs
//! <workdir>/STORE         format, store id, cores, regions per core (written once, atomically)
//! <workdir>/core-<n>/     core n's engine; its regions' descriptors live in its NS_META
//! ```
//!
//! Bootstrap splits the 16384 Redis hash slots into `cores x REGIONS_PER_CORE`
//! equal ranges; range i is region i+1 on core `i % cores`. A region's key range
//! is `[start_slot BE, end_slot BE)` in the Redis namespace (every Redis key,
//! metadata or hash member, starts with its slot), so each core's share is
//! spread over the whole slot space.

use crate::error::{Error, Result};
use nokv::Db;
use nokv_gateway::model::{self, SLOTS};
use nokv_raft::{Epoch, LogReplay, PeerMeta, RegionDescriptor, ReplayedRegion};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The id of this store (a single node for now).
pub const STORE_ID: u64 = 1;
const STORE_FORMAT: &str = "1";

/// The `STORE` file's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreMeta {
    /// This store's id.
    pub store_id: u64,
    /// Cores the workdir was made for.
    pub cores: usize,
    /// Regions per core at bootstrap.
    pub regions_per_core: usize,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Creates the workdir and locks it for this process (the lock lives as long as the file).
pub fn lock_workdir(dir: &Path) -> Result<File> {
    std::fs::create_dir_all(dir).map_err(io("create workdir", dir))?;
    let path = dir.join("LOCK");
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io("open", &path))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::WorkdirLocked {
            path: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::Io {
            op: "lock",
            path,
            source: e,
        }),
    }
}

/// Reads `<workdir>/STORE`, None if absent.
pub fn read_store_meta(dir: &Path) -> Result<Option<StoreMeta>> {
    let path = dir.join("STORE");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("read", &path)(e)),
    };
    let kv = crate::config::parse_config_file(&text)
        .map_err(|e| Error::Layout(format!("{}: {e}", path.display())))?;
    let num = |k: &str| -> Result<u64> {
        kv.get(k)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::Layout(format!("{}: missing or bad {k}", path.display())))
    };
    if kv.get("format").map(String::as_str) != Some(STORE_FORMAT) {
        return Err(Error::Layout(format!(
            "{}: unknown format (this build reads format {STORE_FORMAT})",
            path.display()
        )));
    }
    Ok(Some(StoreMeta {
        store_id: num("store-id")?,
        cores: num("cores")? as usize,
        regions_per_core: num("regions-per-core")? as usize,
    }))
}

/// Writes `<workdir>/STORE` atomically (temp file, fsync, rename, fsync the directory).
pub fn write_store_meta(dir: &Path, meta: &StoreMeta) -> Result<()> {
    let tmp = dir.join("STORE.tmp");
    let path = dir.join("STORE");
    let text = format!(
        "# nokv-server store layout; written once at bootstrap.\nformat = {STORE_FORMAT}\nstore-id = {}\ncores = {}\nregions-per-core = {}\n",
        meta.store_id, meta.cores, meta.regions_per_core
    );
    let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(text.as_bytes()).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("fsync", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("rename", &path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", dir))?;
    Ok(())
}

/// The directory of core `n`'s engine.
pub fn core_dir(workdir: &Path, core: usize) -> PathBuf {
    workdir.join(format!("core-{core}"))
}

/// The key-range bound of a slot (empty for slot 0 and for the end of the space).
fn slot_bound(slot: u32) -> Vec<u8> {
    if slot == 0 || slot >= SLOTS as u32 {
        Vec::new()
    } else {
        (slot as u16).to_be_bytes().to_vec()
    }
}

/// The slot a region bound stands for (`end` = true: the empty bound is the end).
fn bound_slot(key: &[u8], end: bool) -> Result<u32> {
    match key {
        [] => Ok(if end { SLOTS as u32 } else { 0 }),
        [a, b] => Ok(u16::from_be_bytes([*a, *b]) as u32),
        other => Err(Error::Layout(format!(
            "region bound {other:?} is not a hash slot"
        ))),
    }
}

/// The regions bootstrap gives core `core` of `cores`.
pub fn bootstrap_regions(
    cores: usize,
    regions_per_core: usize,
    core: usize,
) -> Vec<RegionDescriptor> {
    let total = (cores * regions_per_core) as u32;
    (0..total)
        .filter(|i| *i as usize % cores == core)
        .map(|i| {
            let start = i * SLOTS as u32 / total;
            let end = (i + 1) * SLOTS as u32 / total;
            RegionDescriptor {
                id: i as u64 + 1,
                start_key: slot_bound(start),
                end_key: slot_bound(end),
                epoch: Epoch {
                    version: 1,
                    conf_version: 1,
                },
                peers: vec![PeerMeta {
                    store_id: STORE_ID,
                    peer_id: i as u64 + 1,
                }],
            }
        })
        .collect()
}

/// One core's engine, regions and replayed raft log, opened on the main thread.
pub struct OpenedCore {
    /// The engine.
    pub db: Db,
    /// Its regions.
    pub regions: Vec<RegionDescriptor>,
    /// Raft records the WAL handed back.
    pub replayed: BTreeMap<u64, ReplayedRegion>,
}

/// Engine options of core engines.
pub fn engine_options(durability: nokv::Durability, replay: &LogReplay) -> nokv::Options {
    nokv::Options {
        durability,
        opaque_replay: Some(replay.hook()),
        block_cache_bytes: 32 << 20,
        ..nokv::Options::default()
    }
}

/// Opens core `core`'s engine; bootstraps its regions if it has none.
pub fn open_core(
    workdir: &Path,
    meta: &StoreMeta,
    core: usize,
    durability: nokv::Durability,
) -> Result<OpenedCore> {
    let dir = core_dir(workdir, core);
    let replay = LogReplay::new();
    let db = Db::open(&dir, engine_options(durability, &replay))
        .map_err(|source| Error::Engine { core, source })?;
    let mut regions =
        nokv_raft::region::load_regions(&db).map_err(|source| Error::Raft { core, source })?;
    if regions.is_empty() {
        for desc in bootstrap_regions(meta.cores, meta.regions_per_core, core) {
            nokv_raft::region::save_region(&db, &desc)
                .map_err(|source| Error::Raft { core, source })?;
            regions.push(desc);
        }
        tracing::info!(core, regions = regions.len(), "bootstrapped regions");
    }
    let replayed = replay
        .take()
        .map_err(|source| Error::Raft { core, source })?;
    Ok(OpenedCore {
        db,
        regions,
        replayed,
    })
}

/// Where a region lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Region id.
    pub region: u64,
    /// Owning core.
    pub core: usize,
    /// First slot.
    pub start_slot: u32,
    /// End slot (exclusive).
    pub end_slot: u32,
}

/// Hash slot -> region -> core, for every slot.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<Route>,
    by_slot: Vec<u16>,
}

impl RouteTable {
    /// Builds the table from each core's regions; fails unless they tile the slot space.
    pub fn build(per_core: &[Vec<RegionDescriptor>]) -> Result<RouteTable> {
        let mut routes = Vec::new();
        for (core, regions) in per_core.iter().enumerate() {
            for r in regions {
                routes.push(Route {
                    region: r.id,
                    core,
                    start_slot: bound_slot(&r.start_key, false)?,
                    end_slot: bound_slot(&r.end_key, true)?,
                });
            }
        }
        routes.sort_by_key(|r| r.start_slot);
        let mut next = 0u32;
        let mut by_slot = vec![0u16; SLOTS as usize];
        for (i, r) in routes.iter().enumerate() {
            if r.start_slot != next || r.end_slot <= r.start_slot {
                return Err(Error::Layout(format!(
                    "regions do not tile the slot space: region {} covers [{}, {}) but {} was expected next",
                    r.region, r.start_slot, r.end_slot, next
                )));
            }
            for s in r.start_slot..r.end_slot {
                by_slot[s as usize] = i as u16;
            }
            next = r.end_slot;
        }
        if next != SLOTS as u32 {
            return Err(Error::Layout(format!(
                "regions do not tile the slot space: slots {next}.. have no region"
            )));
        }
        Ok(RouteTable { routes, by_slot })
    }

    /// The route of a hash slot.
    pub fn for_slot(&self, slot: u16) -> &Route {
        &self.routes[self.by_slot[(slot & (SLOTS - 1)) as usize] as usize]
    }

    /// The route of a Redis key.
    pub fn for_key(&self, key: &[u8]) -> &Route {
        self.for_slot(model::slot(key))
    }

    /// The route after `r` in slot order.
    pub fn next(&self, r: &Route) -> Option<&Route> {
        (r.end_slot < SLOTS as u32).then(|| self.for_slot(r.end_slot as u16))
    }

    /// Every route, in slot order.
    pub fn all(&self) -> &[Route] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::REGIONS_PER_CORE;

    #[test]
    fn bootstrap_tiles_the_slots_and_spreads_regions_over_cores() {
        let per_core: Vec<_> = (0..3).map(|c| bootstrap_regions(3, 4, c)).collect();
        assert!(per_core.iter().all(|r| r.len() == 4));
        let t = RouteTable::build(&per_core).expect("tiles");
        assert_eq!(t.all().len(), 12);
        assert_eq!(t.for_slot(0).region, 1);
        assert_eq!(t.for_slot(SLOTS - 1).region, 12);
        let cores: Vec<usize> = t.all().iter().map(|r| r.core).collect();
        assert_eq!(cores, vec![0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2]);
        let broken = vec![per_core[0].clone(), per_core[1].clone()];
        assert!(RouteTable::build(&broken).is_err());
    }

    #[test]
    fn store_meta_round_trips_and_the_lock_excludes() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read_store_meta(dir.path()).expect("read"), None);
        let m = StoreMeta {
            store_id: 1,
            cores: 2,
            regions_per_core: REGIONS_PER_CORE,
        };
        write_store_meta(dir.path(), &m).expect("write");
        assert_eq!(read_store_meta(dir.path()).expect("read"), Some(m));
        let _held = lock_workdir(dir.path()).expect("lock");
        assert!(matches!(
            lock_workdir(dir.path()),
            Err(Error::WorkdirLocked { .. })
        ));
    }
}

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

use crate::config::Settings;
use crate::error::{Error, Result};
use crate::hooks::NodeHooks;
use crate::knobs::Knobs;
use crate::memory::MemoryBudget;
use nokv::Db;
use nokv_gateway::model::{self, SLOTS};
use nokv_raft::snapshot::DataRange;
use nokv_raft::{Epoch, LogReplay, PeerMeta, Recovered, RegionDescriptor};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
    /// Whether the store belongs to a cluster (`--coordinator`: its id comes from the
    /// coordinator, its regions from the cluster's bootstrap) rather than standing alone.
    pub coordinated: bool,
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

/// Reads the `key = value` lines of `STORE` (`#` starts a comment; values may be quoted;
/// `_` in keys reads as `-`). The format is on disk: it stays as it is.
fn parse_key_values(text: &str) -> std::result::Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!(
                "line {}: expected `key = value`, got {raw:?}",
                n + 1
            ));
        };
        let key = k.trim().replace('_', "-");
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .unwrap_or(v);
        out.insert(key, v.to_string());
    }
    Ok(out)
}

/// Reads `<workdir>/STORE`, None if absent.
pub fn read_store_meta(dir: &Path) -> Result<Option<StoreMeta>> {
    let path = dir.join("STORE");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("read", &path)(e)),
    };
    let kv =
        parse_key_values(&text).map_err(|e| Error::Layout(format!("{}: {e}", path.display())))?;
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
        coordinated: kv.get("coordinated").map(String::as_str) == Some("true"),
    }))
}

/// Writes `<workdir>/STORE` atomically (temp file, fsync, rename, fsync the directory).
pub fn write_store_meta(dir: &Path, meta: &StoreMeta) -> Result<()> {
    let tmp = dir.join("STORE.tmp");
    let path = dir.join("STORE");
    let mut text = format!(
        "# nokv-server store layout; written once at bootstrap.\nformat = {STORE_FORMAT}\nstore-id = {}\ncores = {}\nregions-per-core = {}\n",
        meta.store_id, meta.cores, meta.regions_per_core
    );
    if meta.coordinated {
        text.push_str("coordinated = true\n");
    }
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

/// The `regions - 1` keys that cut the hash-slot space into `regions` equal ranges.
pub fn slot_split_keys(regions: usize) -> Vec<Vec<u8>> {
    let total = regions.max(1) as u32;
    (1..total)
        .map(|i| slot_bound(i * SLOTS as u32 / total))
        .collect()
}

/// The first slot of a region (its start bound), 0 when the bound is not a slot.
pub fn start_slot(desc: &RegionDescriptor) -> u16 {
    bound_slot(&desc.start_key, false).map_or(0, |s| s as u16)
}

/// Whether two regions' key ranges overlap (an empty end is unbounded).
fn overlap(a: &RegionDescriptor, b: &RegionDescriptor) -> bool {
    let below = |start: &[u8], end: &[u8]| end.is_empty() || start < end;
    below(&a.start_key, &b.end_key) && below(&b.start_key, &a.end_key)
}

/// The slots `[start, end)` of a region of the Redis namespace.
pub fn slot_range(desc: &RegionDescriptor) -> Result<(u32, u32)> {
    Ok((
        bound_slot(&desc.start_key, false)?,
        bound_slot(&desc.end_key, true)?,
    ))
}

/// The region bound of a slot (the split key that starts a region at `slot`).
pub fn slot_key(slot: u16) -> Vec<u8> {
    slot_bound(u32::from(slot))
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

/// Where a region's data lives in its core's engine: the Redis namespace between its
/// slot bounds (the gateway's keys start with the slot), in the metadata and sub-key
/// column families and the transaction ones; and the ordered-KV namespace between the
/// same bounds, where transactions keep their keys under their position (`node::txn`).
pub fn region_data(desc: &RegionDescriptor) -> Vec<DataRange> {
    let end = (!desc.end_key.is_empty()).then(|| desc.end_key.clone());
    vec![
        DataRange {
            range: nokv::RegionRange {
                ns: nokv::NS_REDIS,
                start: desc.start_key.clone(),
                end: end.clone(),
            },
            cfs: &[
                model::META_CF,
                model::SUBKEY_CF,
                nokv::CF_LOCK,
                nokv::CF_WRITE,
            ],
        },
        // Transactional keys, stored under their position (`slot BE | key`).
        DataRange {
            range: nokv::RegionRange {
                ns: nokv::NS_KV,
                start: desc.start_key.clone(),
                end,
            },
            cfs: &[nokv::CF_DEFAULT, nokv::CF_LOCK, nokv::CF_WRITE],
        },
    ]
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
                peers: vec![PeerMeta::voter(STORE_ID, i as u64 + 1)],
            }
        })
        .collect()
}

/// One core's engine, regions and replayed raft log, opened on the main thread (all
/// the file IO of starting a core happens here, before its executor runs).
pub struct OpenedCore {
    /// The engine.
    pub db: Db,
    /// Its regions (also in `recovered`).
    pub regions: Vec<RegionDescriptor>,
    /// What the raft core starts from.
    pub recovered: Recovered,
}

/// Engine options of core engines: memtables and block cache sized by the store's
/// memory split, then the test-only knobs.
pub fn engine_options(
    durability: nokv::Durability,
    background_nice: i32,
    replay: &LogReplay,
    budget: &MemoryBudget,
    knobs: &Knobs,
) -> nokv::Options {
    let mut opts = nokv::Options {
        durability,
        background_nice: Some(background_nice),
        opaque_replay: Some(replay.hook()),
        // Transactions read older versions of NS_KV (their start_ts); the safe point
        // (`node::txn::set_safe_point`) is above every raft index the Redis namespace
        // uses as version, which so keeps newest versions only, and below every TSO
        // timestamp. Old transactional versions are collected under the coordinator's
        // transaction safe point instead (`node::txn::hand_safe_point`).
        retain_versions: true,
        // Every Redis read and write looks for lock records of multi-region writes; the
        // engine says when there can be none (`nokv_gateway::lock`). The transaction
        // GC's lock census (`node::txn::min_lock_ts`) skips engines without locks.
        tracked_spaces: vec![nokv_gateway::lock::LOCKS, crate::node::txn::KV_LOCKS],
        ..nokv::Options::default()
    };
    budget.apply(&mut opts);
    knobs.engine(&mut opts);
    opts
}

/// Key in a core's meta space marking that the core got its first regions (bootstrap, or
/// its replicas in a cluster): from then on a core without regions stays without.
const SEEDED_KEY: &[u8] = b"core/seeded";

/// Whether the core's engine has the [`SEEDED_KEY`] mark.
fn is_seeded(db: &Db) -> nokv::Result<bool> {
    Ok(db
        .get_in(
            nokv_raft::region::META_SPACE,
            SEEDED_KEY,
            &nokv::ReadOptions::default(),
        )?
        .is_some())
}

/// Where a core's regions come from when its engine has none.
#[derive(Debug, Clone)]
pub enum Seed {
    /// A standalone store: the single-replica bootstrap layout.
    Standalone,
    /// A store of a cluster: the replicas the coordinator placed on this core (those not
    /// yet in the engine are created).
    Assigned(Vec<RegionDescriptor>),
}

/// Opens core `core`'s engine (options adjusted by `hooks`); creates its regions from
/// `seed` (standalone: only when it has none; cluster: the assigned ones it lacks).
#[allow(clippy::too_many_arguments)]
pub fn open_core(
    workdir: &Path,
    meta: &StoreMeta,
    core: usize,
    settings: &Settings,
    hooks: &NodeHooks,
    budget: &MemoryBudget,
    knobs: &Knobs,
    seed: &Seed,
) -> Result<OpenedCore> {
    let dir = core_dir(workdir, core);
    let replay = LogReplay::new();
    let mut opts = engine_options(
        settings.durability,
        settings.background_nice,
        &replay,
        budget,
        knobs,
    );
    hooks.adjust_engine(core, &mut opts);
    let db = Db::open(&dir, opts).map_err(|source| Error::Engine { core, source })?;
    crate::node::txn::set_safe_point(&db);
    // A region snapshot a crash interrupted is finished before the regions are read.
    nokv_raft::snapshot::recover_pending(&db, region_data)
        .map_err(|source| Error::Raft { core, source })?;
    let mut regions =
        nokv_raft::region::load_regions(&db).map_err(|source| Error::Raft { core, source })?;
    let seeded = is_seeded(&db).map_err(|source| Error::Engine { core, source })?;
    let create = match seed {
        // Only a core that never had regions gets the bootstrap layout: one whose regions
        // all moved to other cores or merged away stays empty.
        Seed::Standalone if regions.is_empty() && !seeded => {
            bootstrap_regions(meta.cores, meta.regions_per_core, core)
        }
        Seed::Standalone => Vec::new(),
        // A region the coordinator knows from a split this core has not made durable yet
        // overlaps the local parent: re-applying the split from the log creates it.
        Seed::Assigned(assigned) => assigned
            .iter()
            .filter(|a| !regions.iter().any(|r| r.id == a.id || overlap(r, a)))
            .cloned()
            .collect(),
    };
    if !create.is_empty() || !seeded {
        // The new descriptors and the seeded mark in one synced write (a crash leaves all
        // or none); a core of an older workdir that has regions gets the mark too.
        let mut b = nokv::WriteBatch::new();
        for desc in &create {
            b.put_in(
                nokv_raft::region::META_SPACE,
                &nokv_raft::region::region_key(desc.id),
                &desc.encode(),
            );
        }
        b.put_in(nokv_raft::region::META_SPACE, SEEDED_KEY, b"1");
        let wo = nokv::WriteOptions {
            durability: Some(nokv::Durability::Sync),
        };
        db.write(&b, &wo)
            .map_err(|source| Error::Engine { core, source })?;
        if !create.is_empty() {
            regions.extend(create);
            tracing::info!(core, regions = regions.len(), "created regions");
        }
    }
    let replayed = replay
        .take()
        .map_err(|source| Error::Raft { core, source })?;
    let recovered = Recovered::load(&db, regions.clone(), replayed)
        .map_err(|source| Error::Raft { core, source })?;
    Ok(OpenedCore {
        db,
        regions,
        recovered,
    })
}

/// The core of a route whose region has no replica on this store.
pub const NOT_HERE: usize = usize::MAX;

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
    by_region: std::collections::HashMap<u64, usize>,
}

impl RouteTable {
    /// Builds the table from each core's regions; fails unless they tile the slot space.
    pub fn build(per_core: &[Vec<RegionDescriptor>]) -> Result<RouteTable> {
        let placed = per_core
            .iter()
            .enumerate()
            .flat_map(|(core, regions)| regions.iter().map(move |r| (r, core)));
        Self::from_regions(placed)
    }

    /// Builds the table from regions and their core ([`NOT_HERE`] for regions without a
    /// replica on this store); fails unless they tile the slot space.
    pub fn from_regions<'a>(
        placed: impl IntoIterator<Item = (&'a RegionDescriptor, usize)>,
    ) -> Result<RouteTable> {
        let mut routes = Vec::new();
        for (r, core) in placed {
            let (start_slot, end_slot) = slot_range(r)?;
            routes.push(Route {
                region: r.id,
                core,
                start_slot,
                end_slot,
            });
        }
        Self::from_routes(routes)
    }

    /// The table after region `parent` split at `child`'s first slot: `child` (on `core`)
    /// takes the slots from there to the parent's end.
    pub fn with_split(
        &self,
        parent: u64,
        child: &RegionDescriptor,
        core: usize,
    ) -> Result<RouteTable> {
        let (start, end) = slot_range(child)?;
        let mut routes = self.routes.clone();
        let Some(p) = routes.iter_mut().find(|r| r.region == parent) else {
            return Err(Error::Layout(format!(
                "split of region {parent}, which is not routed here"
            )));
        };
        if !(p.start_slot < start && start < p.end_slot && end == p.end_slot) {
            return Err(Error::Layout(format!(
                "region {parent} [{}, {}) cannot give [{start}, {end}) to region {}",
                p.start_slot, p.end_slot, child.id
            )));
        }
        p.end_slot = start;
        routes.retain(|r| r.region != child.id);
        routes.push(Route {
            region: child.id,
            core,
            start_slot: start,
            end_slot: end,
        });
        Self::from_routes(routes)
    }

    /// The table after region `source` merged into `target` (as it is now): the target's
    /// route covers both ranges.
    pub fn with_merge(&self, target: &RegionDescriptor, source: u64) -> Result<RouteTable> {
        let (start, end) = slot_range(target)?;
        let mut routes = self.routes.clone();
        let Some(core) = routes
            .iter()
            .find(|r| r.region == target.id)
            .map(|r| r.core)
        else {
            return Err(Error::Layout(format!(
                "merge into region {}, which is not routed here",
                target.id
            )));
        };
        routes.retain(|r| r.region != source && r.region != target.id);
        routes.push(Route {
            region: target.id,
            core,
            start_slot: start,
            end_slot: end,
        });
        Self::from_routes(routes)
    }

    /// The table with the regions this store holds no replica of replaced by `remote`'s
    /// (the coordinator's), keeping every local route; None when that changes nothing or
    /// would not tile the slot space (the coordinator's view is in flux).
    pub fn with_remote(&self, remote: &[RegionDescriptor]) -> Option<RouteTable> {
        let local: Vec<Route> = self
            .routes
            .iter()
            .filter(|r| r.core != NOT_HERE)
            .cloned()
            .collect();
        let mut routes = local.clone();
        for d in remote {
            let Ok((s, e)) = slot_range(d) else {
                continue;
            };
            let covered = local
                .iter()
                .any(|l| l.region == d.id || (l.start_slot < e && s < l.end_slot));
            if !covered {
                routes.push(Route {
                    region: d.id,
                    core: NOT_HERE,
                    start_slot: s,
                    end_slot: e,
                });
            }
        }
        let table = Self::from_routes(routes).ok()?;
        (table.routes != self.routes).then_some(table)
    }

    /// The table with region `region` on core `core` (a move between cores).
    pub fn with_core(&self, region: u64, core: usize) -> Result<RouteTable> {
        let mut routes = self.routes.clone();
        let Some(r) = routes.iter_mut().find(|r| r.region == region) else {
            return Err(Error::Layout(format!("region {region} is not routed here")));
        };
        r.core = core;
        Self::from_routes(routes)
    }

    /// Builds the table from routes; fails unless they tile the slot space.
    fn from_routes(mut routes: Vec<Route>) -> Result<RouteTable> {
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
        let by_region = routes.iter().map(|r| (r.region, r.core)).collect();
        Ok(RouteTable {
            routes,
            by_slot,
            by_region,
        })
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

    /// The core holding region `id` here ([`NOT_HERE`] when no replica is on this store).
    pub fn core_of(&self, id: u64) -> Option<usize> {
        self.by_region.get(&id).copied()
    }

    /// Every route, in slot order.
    pub fn all(&self) -> &[Route] {
        &self.routes
    }
}

/// The store's route table, replaced when a split changes it; cores read it through a
/// [`LocalRoutes`] copy, so a request costs one atomic load.
pub struct SharedRoutes {
    table: std::sync::RwLock<Arc<RouteTable>>,
    generation: AtomicU64,
}

impl SharedRoutes {
    /// Starts with `table`.
    pub fn new(table: RouteTable) -> SharedRoutes {
        SharedRoutes {
            table: std::sync::RwLock::new(Arc::new(table)),
            generation: AtomicU64::new(0),
        }
    }

    /// The table now.
    pub fn current(&self) -> Arc<RouteTable> {
        match self.table.read() {
            Ok(t) => t.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replaces the table with `f(current)` when it gives one; returns whether it did.
    pub fn replace_with(&self, f: impl FnOnce(&RouteTable) -> Option<RouteTable>) -> bool {
        let mut t = match self.table.write() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        };
        let Some(new) = f(&t) else {
            return false;
        };
        *t = Arc::new(new);
        self.generation.fetch_add(1, Ordering::Release);
        true
    }

    /// Replaces the table with `f(current)` (nothing changes when `f` fails).
    pub fn update(&self, f: impl FnOnce(&RouteTable) -> Result<RouteTable>) -> Result<()> {
        let mut t = match self.table.write() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        };
        *t = Arc::new(f(&t)?);
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }
}

/// A core's copy of the [`SharedRoutes`], refreshed when the shared table changed.
pub struct LocalRoutes {
    seen: std::cell::Cell<u64>,
    table: std::cell::RefCell<std::rc::Rc<RouteTable>>,
}

impl LocalRoutes {
    /// A copy of `shared` as it is now.
    pub fn new(shared: &SharedRoutes) -> LocalRoutes {
        let seen = shared.generation.load(Ordering::Acquire);
        LocalRoutes {
            seen: std::cell::Cell::new(seen),
            table: std::cell::RefCell::new(std::rc::Rc::new((*shared.current()).clone())),
        }
    }

    /// The current table (copied from `shared` when it changed since the last look).
    pub fn get(&self, shared: &SharedRoutes) -> std::rc::Rc<RouteTable> {
        let now = shared.generation.load(Ordering::Acquire);
        if now != self.seen.get() {
            *self.table.borrow_mut() = std::rc::Rc::new((*shared.current()).clone());
            self.seen.set(now);
        }
        self.table.borrow().clone()
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
        assert_eq!(
            (t.core_of(1), t.core_of(5), t.core_of(99)),
            (Some(0), Some(1), None)
        );
        let broken = vec![per_core[0].clone(), per_core[1].clone()];
        assert!(RouteTable::build(&broken).is_err());
    }

    #[test]
    fn remote_regions_follow_the_coordinator_and_local_ones_stay() {
        let region = |id: u64, s: u16, e: u32| RegionDescriptor {
            id,
            start_key: slot_key(s),
            end_key: if e >= SLOTS as u32 {
                Vec::new()
            } else {
                slot_key(e as u16)
            },
            epoch: Epoch::default(),
            peers: Vec::new(),
        };
        let t = RouteTable::from_regions([
            (&region(1, 0, 8192), 0),
            (&region(2, 8192, 16384), NOT_HERE),
        ])
        .expect("tiles");
        // Region 2 split elsewhere into 2 and 9; the coordinator still has region 1 whole
        // and a stale region 5 over part of it: the local region stays as it is.
        let remote = [
            region(1, 0, 8192),
            region(5, 4096, 8192),
            region(2, 8192, 12288),
            region(9, 12288, 16384),
        ];
        let new = t.with_remote(&remote).expect("changed");
        assert_eq!(new.for_slot(12288).region, 9);
        assert_eq!(new.core_of(9), Some(NOT_HERE));
        assert_eq!(new.for_slot(4096).region, 1);
        assert_eq!(new.core_of(1), Some(0));
        assert!(
            new.with_remote(&remote).is_none(),
            "nothing changes the second time"
        );
        // A view that leaves a gap changes nothing.
        assert!(t.with_remote(&[region(2, 8192, 12288)]).is_none());
    }

    #[test]
    fn a_split_hands_the_upper_slots_to_the_child_on_its_core() {
        let per_core: Vec<_> = (0..2).map(|c| bootstrap_regions(2, 1, c)).collect();
        let t = RouteTable::build(&per_core).expect("tiles");
        let parent = t.for_slot(0).clone();
        let mut child = per_core[0][0].clone();
        child.id = 9;
        child.start_key = slot_key(100);
        let shared = SharedRoutes::new(t);
        let local = LocalRoutes::new(&shared);
        assert_eq!(local.get(&shared).for_slot(100).region, parent.region);
        shared
            .update(|t| t.with_split(parent.region, &child, 0))
            .expect("split");
        let now = local.get(&shared);
        assert_eq!(now.for_slot(99).region, parent.region);
        assert_eq!(now.for_slot(100).region, 9);
        assert_eq!(now.for_slot(parent.end_slot as u16 - 1).region, 9);
        assert_eq!(now.core_of(9), Some(0));
        // A child that does not end where its parent does, or an unknown parent: refused,
        // and the table stays as it was.
        let mut bad = child.clone();
        bad.id = 10;
        bad.start_key = slot_key(50);
        bad.end_key = slot_key(60);
        assert!(shared
            .update(|t| t.with_split(parent.region, &bad, 0))
            .is_err());
        assert!(shared.update(|t| t.with_split(12345, &child, 0)).is_err());
        assert_eq!(local.get(&shared).all().len(), now.all().len());
    }

    #[test]
    fn store_meta_round_trips_and_the_lock_excludes() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read_store_meta(dir.path()).expect("read"), None);
        let m = StoreMeta {
            store_id: 1,
            cores: 2,
            regions_per_core: REGIONS_PER_CORE,
            coordinated: false,
        };
        write_store_meta(dir.path(), &m).expect("write");
        assert_eq!(read_store_meta(dir.path()).expect("read"), Some(m.clone()));
        let c = StoreMeta {
            store_id: 7,
            coordinated: true,
            ..m
        };
        write_store_meta(dir.path(), &c).expect("write");
        assert_eq!(read_store_meta(dir.path()).expect("read"), Some(c));
        assert_eq!(slot_split_keys(1), Vec::<Vec<u8>>::new());
        assert_eq!(slot_split_keys(4).len(), 3);
        assert_eq!(slot_split_keys(4)[0], 4096u16.to_be_bytes().to_vec());
        let _held = lock_workdir(dir.path()).expect("lock");
        assert!(matches!(
            lock_workdir(dir.path()),
            Err(Error::WorkdirLocked { .. })
        ));
    }
}

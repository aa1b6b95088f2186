//! The coordinator's persisted state: stores, regions, pending peers, the id fence and the
//! TSO bound, and its layout in the embedded `nokv::Db`.
//!
//! Every mutation is a [`Command`]: [`ClusterState::batch_for`] turns it into the engine
//! write that persists it and [`ClusterState::apply`] applies it in memory. Both depend only
//! on the command and the state, so replicas that apply the same commands in the same order
//! hold the same state (the hook for replicating the coordinator through a raft log).
//!
//! Layout (default key space, values are prost messages unless noted):
//!
//! | key | value |
//! |---|---|
//! | `c/cluster_id` | u64 BE |
//! | `c/format` | u64 BE, [`FORMAT`] |
//! | `c/bootstrapped` | empty |
//! | `c/mode` | `single` or `replicated`: how the workdir is run |
//! | `c/id_fence` | u64 BE: ids below it may have been handed out |
//! | `c/tso_bound` | u64 BE: physical ms up to it may have been handed out |
//! | `c/replicas` | u64 BE: replicas per region at the bootstrap (the scheduler's target) |
//! | `s/<store id u64 BE>` | [`StoreMeta`] |
//! | `r/<region id u64 BE>` | [`RegionRecord`] |
//! | `p/<peer id u64 BE>` | [`PendingPeer`] |

use crate::error::{Error, Result};
use crate::proto::{command, Command, PendingPeer, Region, RegionRecord, Route, StoreMeta};
use nokv::{Db, ReadOptions, WriteBatch};
use prost::Message;
use std::collections::{BTreeMap, HashMap};

/// Version of the persisted layout.
pub const FORMAT: u64 = 1;
const KEY_CLUSTER_ID: &[u8] = b"c/cluster_id";
const KEY_FORMAT: &[u8] = b"c/format";
const KEY_BOOTSTRAPPED: &[u8] = b"c/bootstrapped";
const KEY_MODE: &[u8] = b"c/mode";
const KEY_ID_FENCE: &[u8] = b"c/id_fence";
const KEY_TSO_BOUND: &[u8] = b"c/tso_bound";
const KEY_REPLICAS: &[u8] = b"c/replicas";
const PREFIX_STORE: &[u8] = b"s/";
const PREFIX_REGION: &[u8] = b"r/";
const PREFIX_PENDING: &[u8] = b"p/";

fn key(prefix: &[u8], id: u64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn u64_value(what: &str, v: &[u8]) -> Result<u64> {
    let b: [u8; 8] = v
        .try_into()
        .map_err(|_| Error::corrupt(what, format!("{} bytes, want 8", v.len())))?;
    Ok(u64::from_be_bytes(b))
}

/// A region with its leader, as held in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionEntry {
    /// The descriptor with cores.
    pub region: Region,
    /// The leader's peer id (0: unknown).
    pub leader_peer_id: u64,
}

/// The catalog: what [`Command`]s build.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterState {
    bootstrapped: bool,
    stores: BTreeMap<u64, StoreMeta>,
    regions: HashMap<u64, RegionEntry>,
    by_start: BTreeMap<Vec<u8>, u64>,
    pending: BTreeMap<u64, PendingPeer>,
    id_fence: u64,
    tso_bound_ms: u64,
    replicas: u32,
}

impl ClusterState {
    /// An empty catalog.
    pub fn new() -> ClusterState {
        ClusterState::default()
    }

    /// Whether the first regions exist.
    pub fn bootstrapped(&self) -> bool {
        self.bootstrapped
    }

    /// Replicas per region the cluster was bootstrapped with (0: not recorded).
    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    /// The persisted id fence.
    pub fn id_fence(&self) -> u64 {
        self.id_fence
    }

    /// The persisted TSO bound (ms).
    pub fn tso_bound_ms(&self) -> u64 {
        self.tso_bound_ms
    }

    /// Registered stores by id.
    pub fn stores(&self) -> &BTreeMap<u64, StoreMeta> {
        &self.stores
    }

    /// One store.
    pub fn store(&self, id: u64) -> Option<&StoreMeta> {
        self.stores.get(&id)
    }

    /// One region.
    pub fn region(&self, id: u64) -> Option<&RegionEntry> {
        self.regions.get(&id)
    }

    /// Number of regions.
    pub fn region_count(&self) -> usize {
        self.regions.len()
    }

    /// Regions in key order.
    pub fn regions_in_order(&self) -> impl Iterator<Item = &RegionEntry> {
        self.by_start.values().filter_map(|id| self.regions.get(id))
    }

    /// Regions in key order from the one holding `key` (or the first starting after it).
    pub fn regions_from<'a>(&'a self, key: &[u8]) -> impl Iterator<Item = &'a RegionEntry> + 'a {
        let first = self.region_by_key(key);
        let rest = self
            .by_start
            .range((
                std::ops::Bound::Excluded(key.to_vec()),
                std::ops::Bound::Unbounded,
            ))
            .filter_map(|(_, id)| self.regions.get(id));
        first.into_iter().chain(rest)
    }

    /// Pending peers by peer id.
    pub fn pending(&self) -> &BTreeMap<u64, PendingPeer> {
        &self.pending
    }

    /// The region whose range holds `key`.
    pub fn region_by_key(&self, key: &[u8]) -> Option<&RegionEntry> {
        let (_, id) = self.by_start.range(..=key.to_vec()).next_back()?;
        let e = self.regions.get(id)?;
        e.region.contains(key).then_some(e)
    }

    /// Regions (other than `region.id`) whose ranges overlap `region`'s.
    pub fn overlapping(&self, region: &Region) -> Vec<&RegionEntry> {
        // Candidates: the region holding the start key, then every region starting inside.
        let mut out = Vec::new();
        if let Some(e) = self.region_by_key(&region.start_key) {
            out.push(e);
        }
        let upper = if region.end_key.is_empty() {
            std::ops::Bound::Unbounded
        } else {
            std::ops::Bound::Excluded(region.end_key.clone())
        };
        let lower = std::ops::Bound::Included(region.start_key.clone());
        for (_, id) in self.by_start.range((lower, upper)) {
            if let Some(e) = self.regions.get(id) {
                if !out.iter().any(|o| o.region.id == e.region.id) {
                    out.push(e);
                }
            }
        }
        out.retain(|e| e.region.id != region.id && e.region.overlaps(region));
        out
    }

    /// The regions right before and right after `region`'s range (other than itself): where
    /// a split's sibling or a merge's partner is.
    pub fn adjacent(&self, region: &Region) -> Vec<&RegionEntry> {
        let mut out = Vec::new();
        if !region.start_key.is_empty() {
            if let Some((_, id)) = self.by_start.range(..region.start_key.clone()).next_back() {
                if let Some(e) = self.regions.get(id) {
                    if e.region.end_key == region.start_key {
                        out.push(e);
                    }
                }
            }
        }
        if !region.end_key.is_empty() {
            if let Some(e) = self
                .by_start
                .get(&region.end_key)
                .and_then(|id| self.regions.get(id))
            {
                out.push(e);
            }
        }
        out.retain(|e| e.region.id != region.id);
        out
    }

    /// The route of a region: the region, its leader and its stores' addresses.
    pub fn route(&self, e: &RegionEntry) -> Route {
        let mut stores: Vec<StoreMeta> = Vec::new();
        for p in &e.region.peers {
            if stores.iter().any(|s| s.id == p.store_id) {
                continue;
            }
            if let Some(s) = self.stores.get(&p.store_id) {
                stores.push(s.clone());
            }
        }
        Route {
            region: Some(e.region.clone()),
            leader_peer_id: e.leader_peer_id,
            stores,
            approximate_size_bytes: None,
        }
    }

    /// The engine write that persists `cmd` applied to this state (fences and bounds are
    /// written as the maximum of the current value and the command's).
    pub fn batch_for(&self, cmd: &Command) -> WriteBatch {
        let mut b = WriteBatch::new();
        match &cmd.body {
            // An empty command changes nothing (every replica skips it alike).
            None => {}
            Some(command::Body::PutStore(s)) => {
                b.put(&key(PREFIX_STORE, s.id), &s.encode_to_vec());
            }
            Some(command::Body::PutRegions(p)) | Some(command::Body::Bootstrap(p)) => {
                for id in &p.remove {
                    b.delete(&key(PREFIX_REGION, *id));
                }
                for r in &p.regions {
                    let id = r.region.as_ref().map(|r| r.id).unwrap_or(0);
                    b.put(&key(PREFIX_REGION, id), &r.encode_to_vec());
                }
                for id in &p.resolved_pending {
                    b.delete(&key(PREFIX_PENDING, *id));
                }
                if matches!(cmd.body, Some(command::Body::Bootstrap(_))) {
                    b.put(KEY_BOOTSTRAPPED, b"");
                    if p.replicas > 0 {
                        b.put(KEY_REPLICAS, &u64::from(p.replicas).to_be_bytes());
                    }
                }
            }
            Some(command::Body::RaiseIdFence(v)) => {
                b.put(KEY_ID_FENCE, &self.id_fence.max(*v).to_be_bytes());
            }
            Some(command::Body::RaiseTsoBound(v)) => {
                b.put(KEY_TSO_BOUND, &self.tso_bound_ms.max(*v).to_be_bytes());
            }
            Some(command::Body::PutPendingPeer(p)) => {
                let id = p.peer.as_ref().map(|p| p.id).unwrap_or(0);
                b.put(&key(PREFIX_PENDING, id), &p.encode_to_vec());
            }
        }
        b
    }

    /// Applies `cmd` in memory. Deterministic: the result depends on the state and the
    /// command only. Fences and bounds never go down.
    pub fn apply(&mut self, cmd: &Command) {
        match &cmd.body {
            None => {}
            Some(command::Body::PutStore(s)) => {
                self.stores.insert(s.id, s.clone());
            }
            Some(command::Body::PutRegions(p)) | Some(command::Body::Bootstrap(p)) => {
                for id in &p.remove {
                    self.remove_region(*id);
                }
                for r in &p.regions {
                    if let Some(region) = &r.region {
                        self.insert_region(RegionEntry {
                            region: region.clone(),
                            leader_peer_id: r.leader_peer_id,
                        });
                    }
                }
                for id in &p.resolved_pending {
                    self.pending.remove(id);
                }
                if matches!(cmd.body, Some(command::Body::Bootstrap(_))) {
                    self.bootstrapped = true;
                    if p.replicas > 0 {
                        self.replicas = p.replicas;
                    }
                }
            }
            Some(command::Body::RaiseIdFence(v)) => self.id_fence = self.id_fence.max(*v),
            Some(command::Body::RaiseTsoBound(v)) => self.tso_bound_ms = self.tso_bound_ms.max(*v),
            Some(command::Body::PutPendingPeer(p)) => {
                if let Some(peer) = &p.peer {
                    self.pending.insert(peer.id, p.clone());
                }
            }
        }
    }

    fn remove_region(&mut self, id: u64) {
        if let Some(old) = self.regions.remove(&id) {
            if self.by_start.get(&old.region.start_key) == Some(&id) {
                self.by_start.remove(&old.region.start_key);
            }
        }
    }

    fn insert_region(&mut self, e: RegionEntry) {
        self.remove_region(e.region.id);
        self.by_start
            .insert(e.region.start_key.clone(), e.region.id);
        self.regions.insert(e.region.id, e);
    }

    /// Loads the state persisted in `db`; a fresh `db` is stamped with `cluster_id`, one of
    /// another cluster is refused.
    pub fn load(db: &Db, cluster_id: u64) -> Result<ClusterState> {
        let get = |k: &[u8]| {
            db.get(k)
                .map_err(|e| Error::engine("read coordinator state", e))
        };
        match get(KEY_CLUSTER_ID)? {
            Some(v) => {
                let found = u64_value("cluster id", &v)?;
                if found != cluster_id {
                    return Err(Error::ClusterMismatch {
                        expected: cluster_id,
                        found,
                    });
                }
                let format = match get(KEY_FORMAT)? {
                    Some(v) => u64_value("format", &v)?,
                    None => 0,
                };
                if format != FORMAT {
                    return Err(Error::corrupt(
                        "format",
                        format!("layout version {format}, this build reads {FORMAT}"),
                    ));
                }
            }
            None => {
                let mut b = WriteBatch::new();
                b.put(KEY_CLUSTER_ID, &cluster_id.to_be_bytes());
                b.put(KEY_FORMAT, &FORMAT.to_be_bytes());
                db.write(&b, &nokv::WriteOptions::default())
                    .map_err(|e| Error::engine("stamp workdir with the cluster id", e))?;
            }
        }
        let mut st = ClusterState::new();
        st.bootstrapped = get(KEY_BOOTSTRAPPED)?.is_some();
        if let Some(v) = get(KEY_ID_FENCE)? {
            st.id_fence = u64_value("id fence", &v)?;
        }
        if let Some(v) = get(KEY_TSO_BOUND)? {
            st.tso_bound_ms = u64_value("tso bound", &v)?;
        }
        if let Some(v) = get(KEY_REPLICAS)? {
            st.replicas = u32::try_from(u64_value("replicas", &v)?)
                .map_err(|_| Error::corrupt("replicas", "out of range"))?;
        }
        for (k, v) in scan(db, PREFIX_STORE)? {
            let s = StoreMeta::decode(v.as_slice())
                .map_err(|e| Error::corrupt(format!("store record {k:?}"), e))?;
            st.stores.insert(s.id, s);
        }
        for (k, v) in scan(db, PREFIX_REGION)? {
            let r = RegionRecord::decode(v.as_slice())
                .map_err(|e| Error::corrupt(format!("region record {k:?}"), e))?;
            let region = r
                .region
                .ok_or_else(|| Error::corrupt(format!("region record {k:?}"), "no descriptor"))?;
            st.insert_region(RegionEntry {
                region,
                leader_peer_id: r.leader_peer_id,
            });
        }
        for (k, v) in scan(db, PREFIX_PENDING)? {
            let p = PendingPeer::decode(v.as_slice())
                .map_err(|e| Error::corrupt(format!("pending peer {k:?}"), e))?;
            if let Some(peer) = &p.peer {
                st.pending.insert(peer.id, p.clone());
            }
        }
        Ok(st)
    }
}

/// Checks (and on a fresh workdir records) whether the workdir is run as a single process
/// or as a replica: the two cannot be mixed, since a replica's state must come from the
/// replicated log alone.
pub fn check_mode(db: &Db, state: &ClusterState, replicated: bool) -> Result<()> {
    let want: &[u8] = if replicated { b"replicated" } else { b"single" };
    let found = db
        .get(KEY_MODE)
        .map_err(|e| Error::engine("read coordinator mode", e))?;
    let fresh = state.stores.is_empty()
        && state.regions.is_empty()
        && state.id_fence == 0
        && state.tso_bound_ms == 0;
    let found = match found {
        Some(v) => v,
        // Written by a build before the mode key: a single process.
        None if !fresh => b"single".to_vec(),
        None => {
            db.put(KEY_MODE, want)
                .map_err(|e| Error::engine("record coordinator mode", e))?;
            return Ok(());
        }
    };
    if found != want {
        return Err(Error::InvalidArgument(format!(
            "workdir was run as a {} coordinator and cannot be opened as a {} one \
             (start replicas on fresh workdirs)",
            String::from_utf8_lossy(&found),
            String::from_utf8_lossy(want)
        )));
    }
    Ok(())
}

/// Every (key, value) under `prefix`.
fn scan(db: &Db, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let ro = ReadOptions {
        prefix: Some(prefix.to_vec()),
        ..Default::default()
    };
    let mut it = db
        .iter(ro)
        .map_err(|e| Error::engine("scan coordinator state", e))?;
    it.seek_to_first();
    let mut out = Vec::new();
    // Bounded by the records persisted under the prefix.
    while it.valid() {
        out.push((it.key().to_vec(), it.value().to_vec()));
        it.next();
    }
    it.status()
        .map_err(|e| Error::engine("scan coordinator state", e))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Peer, PutRegions};
    use proptest::prelude::*;

    fn region(id: u64, start: &[u8], end: &[u8]) -> Region {
        Region {
            id,
            start_key: start.to_vec(),
            end_key: end.to_vec(),
            epoch_version: 1,
            epoch_conf_version: 1,
            peers: vec![Peer {
                id: id * 10,
                store_id: 1,
                core: Some(0),
                learner: false,
            }],
        }
    }

    fn put(st: &mut ClusterState, regions: Vec<Region>) {
        st.apply(&Command {
            body: Some(command::Body::PutRegions(PutRegions {
                regions: regions
                    .into_iter()
                    .map(|r| RegionRecord {
                        region: Some(r),
                        leader_peer_id: 0,
                    })
                    .collect(),
                ..Default::default()
            })),
        });
    }

    #[test]
    fn route_lookup_by_key_across_many_regions() {
        let mut st = ClusterState::new();
        // 1000 regions split at "k0001".."k0999": region i covers [k{i}, k{i+1}).
        let bounds: Vec<Vec<u8>> = (1..1000).map(|i| format!("k{i:04}").into_bytes()).collect();
        let mut regions = Vec::new();
        for i in 0..1000usize {
            let start = if i == 0 {
                Vec::new()
            } else {
                bounds[i - 1].clone()
            };
            let end = bounds.get(i).cloned().unwrap_or_default();
            regions.push(region(i as u64 + 1, &start, &end));
        }
        put(&mut st, regions);
        assert_eq!(st.region_by_key(b"").map(|e| e.region.id), Some(1));
        assert_eq!(st.region_by_key(b"a").map(|e| e.region.id), Some(1));
        assert_eq!(st.region_by_key(b"k0001").map(|e| e.region.id), Some(2));
        assert_eq!(st.region_by_key(b"k0001\xff").map(|e| e.region.id), Some(2));
        assert_eq!(st.region_by_key(b"k0500").map(|e| e.region.id), Some(501));
        assert_eq!(st.region_by_key(b"k0999").map(|e| e.region.id), Some(1000));
        assert_eq!(
            st.region_by_key(b"\xff\xff").map(|e| e.region.id),
            Some(1000)
        );
        for i in 0..3000u32 {
            let k = format!("k{:04}x{i}", i % 1000).into_bytes();
            let e = st.region_by_key(&k).expect("covered");
            assert!(e.region.contains(&k));
        }
        assert_eq!(st.regions_in_order().count(), 1000);
    }

    #[test]
    fn a_hole_in_the_key_space_is_not_covered() {
        let mut st = ClusterState::new();
        put(&mut st, vec![region(1, b"", b"b"), region(2, b"c", b"")]);
        assert!(st.region_by_key(b"bb").is_none());
        assert_eq!(st.region_by_key(b"c").map(|e| e.region.id), Some(2));
    }

    #[test]
    fn overlaps_are_found_at_both_ends() {
        let mut st = ClusterState::new();
        put(
            &mut st,
            vec![
                region(1, b"", b"b"),
                region(2, b"b", b"d"),
                region(3, b"d", b""),
            ],
        );
        let ids = |r: &Region| {
            let mut v: Vec<u64> = st.overlapping(r).iter().map(|e| e.region.id).collect();
            v.sort();
            v
        };
        assert_eq!(ids(&region(9, b"a", b"c")), vec![1, 2]);
        assert_eq!(ids(&region(9, b"c", b"")), vec![2, 3]);
        assert_eq!(ids(&region(9, b"b", b"d")), vec![2]);
        assert_eq!(ids(&region(2, b"b", b"c")), Vec::<u64>::new());
    }

    fn arb_command() -> impl Strategy<Value = Command> {
        let store = (1u64..6, 1u32..4).prop_map(|(id, cores)| {
            command::Body::PutStore(StoreMeta {
                id,
                rpc_addr: format!("h:{id}"),
                cores,
                ..Default::default()
            })
        });
        // Region i covers [i, i+1) or [i, ..): ids and start keys never collide.
        let record =
            (1u8..9, any::<bool>(), 0u64..4, 0u64..30).prop_map(|(id, open, v, leader)| {
                let end = if open { vec![] } else { vec![id + 1] };
                let mut r = region(u64::from(id), &[id], &end);
                r.epoch_version = v;
                RegionRecord {
                    region: Some(r),
                    leader_peer_id: leader,
                }
            });
        let regions = (
            proptest::collection::vec(record, 0..3),
            proptest::collection::vec(1u64..9, 0..2),
            proptest::collection::vec(1u64..20, 0..2),
            any::<bool>(),
        )
            .prop_map(|(regions, remove, resolved_pending, boot)| {
                let p = PutRegions {
                    regions,
                    remove,
                    resolved_pending,
                    replicas: if boot { 3 } else { 0 },
                };
                if boot {
                    command::Body::Bootstrap(p)
                } else {
                    command::Body::PutRegions(p)
                }
            });
        let pending = (1u64..9, 1u64..20, 1u64..6).prop_map(|(region_id, id, store_id)| {
            command::Body::PutPendingPeer(PendingPeer {
                region_id,
                peer: Some(Peer {
                    id,
                    store_id,
                    core: Some(0),
                    learner: false,
                }),
            })
        });
        prop_oneof![
            store,
            regions,
            pending,
            (0u64..100).prop_map(command::Body::RaiseIdFence),
            (0u64..100).prop_map(command::Body::RaiseTsoBound),
        ]
        .prop_map(|b| Command { body: Some(b) })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn persisted_commands_load_back_as_the_applied_state(cmds in proptest::collection::vec(arb_command(), 0..24)) {
            let dir = tempfile::tempdir().expect("tempdir");
            let opts = nokv::Options { durability: nokv::Durability::Relaxed, ..Default::default() };
            let db = Db::open(dir.path(), opts).expect("open");
            let mut st = ClusterState::load(&db, 5).expect("fresh");
            let mut twin = ClusterState::new();
            for cmd in &cmds {
                // Commands travel encoded (as they would through a raft log).
                let decoded = Command::decode(cmd.encode_to_vec().as_slice()).expect("decode");
                let batch = st.batch_for(&decoded);
                db.write(&batch, &nokv::WriteOptions::default()).expect("write");
                st.apply(&decoded);
                twin.apply(cmd);
            }
            let loaded = ClusterState::load(&db, 5).expect("load");
            prop_assert_eq!(&loaded, &st);
            prop_assert_eq!(&st, &twin, "apply is deterministic");
        }
    }

    #[test]
    fn fences_never_go_down() {
        let mut st = ClusterState::new();
        for v in [5, 3, 9, 1] {
            st.apply(&Command {
                body: Some(command::Body::RaiseIdFence(v)),
            });
            st.apply(&Command {
                body: Some(command::Body::RaiseTsoBound(v * 10)),
            });
        }
        assert_eq!((st.id_fence(), st.tso_bound_ms()), (9, 90));
    }
}

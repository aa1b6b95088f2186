//! The route cache: regions by key range, each with its replicas' stores and the store
//! believed to lead it, and the stores' RPC addresses.
//!
//! A Redis key lives in the region whose range holds its routing key, the big-endian hash
//! slot ([`routing_key`]): the stores split the slot space into regions
//! `[start_slot BE, end_slot BE)` (`shard/src/layout.rs`) and the coordinator looks routes
//! up by that key (`shard/src/cluster.rs`, the gateway's `model::slot`).

use nokv_coordinator::proto::Route;
use std::collections::{BTreeMap, HashMap};

/// The key a Redis key is routed by: its hash slot, big-endian.
pub fn routing_key(key: &[u8]) -> [u8; 2] {
    nokv_gateway::model::slot(key).to_be_bytes()
}

/// One cached region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionRoute {
    /// Region id.
    pub id: u64,
    /// First routing key (inclusive).
    pub start_key: Vec<u8>,
    /// End routing key (exclusive; empty: unbounded).
    pub end_key: Vec<u8>,
    /// The stores holding a voter, in the coordinator's order.
    pub stores: Vec<u64>,
    /// The store believed to lead the region (None: unknown, try the voters in turn).
    pub leader: Option<u64>,
}

impl RegionRoute {
    /// Whether `key` is in the region's range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start_key.as_slice()
            && (self.end_key.is_empty() || key < self.end_key.as_slice())
    }

    /// The store to send the next request to: the leader if known, else the first voter.
    pub fn target(&self) -> Option<u64> {
        self.leader.or_else(|| self.stores.first().copied())
    }

    /// The coordinator's route as a cache entry, with the RPC addresses it names; None
    /// when the route carries no region.
    pub fn from_route(route: &Route) -> Option<(RegionRoute, Vec<(u64, String)>)> {
        let region = route.region.as_ref()?;
        let mut stores: Vec<u64> = Vec::new();
        for p in region.peers.iter().filter(|p| !p.learner) {
            if !stores.contains(&p.store_id) {
                stores.push(p.store_id);
            }
        }
        let leader = route.leader().map(|p| p.store_id);
        let addrs = route
            .stores
            .iter()
            .filter(|s| !s.rpc_addr.is_empty())
            .map(|s| (s.id, s.rpc_addr.clone()))
            .collect();
        Some((
            RegionRoute {
                id: region.id,
                start_key: region.start_key.clone(),
                end_key: region.end_key.clone(),
                stores,
                leader,
            },
            addrs,
        ))
    }
}

/// Regions by start key, and store addresses.
#[derive(Debug, Default)]
pub struct RouteCache {
    by_start: BTreeMap<Vec<u8>, RegionRoute>,
    addrs: HashMap<u64, String>,
}

impl RouteCache {
    /// An empty cache.
    pub fn new() -> RouteCache {
        RouteCache::default()
    }

    /// The region holding routing key `key`, if cached.
    pub fn lookup(&self, key: &[u8]) -> Option<&RegionRoute> {
        let (_, r) = self.by_start.range(..=key.to_vec()).next_back()?;
        r.contains(key).then_some(r)
    }

    /// Region `id`, if cached.
    pub fn region(&self, id: u64) -> Option<&RegionRoute> {
        self.by_start.values().find(|r| r.id == id)
    }

    /// Every cached region in key order.
    pub fn regions(&self) -> impl Iterator<Item = &RegionRoute> {
        self.by_start.values()
    }

    /// How many regions are cached.
    pub fn len(&self) -> usize {
        self.by_start.len()
    }

    /// Whether no region is cached.
    pub fn is_empty(&self) -> bool {
        self.by_start.is_empty()
    }

    /// Whether the cached regions cover the whole key space without a gap.
    pub fn is_complete(&self) -> bool {
        let mut want: &[u8] = &[];
        for r in self.by_start.values() {
            if r.start_key.as_slice() != want {
                return false;
            }
            if r.end_key.is_empty() {
                return true;
            }
            want = &r.end_key;
        }
        false
    }

    /// The region after `region` in key order (None: it is the last, or not cached).
    pub fn next(&self, region: &RegionRoute) -> Option<&RegionRoute> {
        if region.end_key.is_empty() {
            return None;
        }
        self.lookup(&region.end_key)
    }

    /// Caches `route`, dropping every cached region it overlaps (they are older).
    pub fn insert(&mut self, route: RegionRoute) {
        let stale: Vec<Vec<u8>> = self
            .by_start
            .values()
            .filter(|r| {
                r.id == route.id
                    || ((route.end_key.is_empty() || r.start_key < route.end_key)
                        && (r.end_key.is_empty() || route.start_key < r.end_key))
            })
            .map(|r| r.start_key.clone())
            .collect();
        for k in stale {
            self.by_start.remove(&k);
        }
        self.by_start.insert(route.start_key.clone(), route);
    }

    /// Caches the coordinator's `route` and the addresses it names.
    pub fn insert_route(&mut self, route: &Route) -> Option<u64> {
        let (r, addrs) = RegionRoute::from_route(route)?;
        let id = r.id;
        self.insert(r);
        self.addrs.extend(addrs);
        Some(id)
    }

    /// Replaces every region with `routes` (a full scan from the coordinator).
    pub fn replace_all(&mut self, routes: &[Route]) {
        self.by_start.clear();
        for r in routes {
            self.insert_route(r);
        }
    }

    /// Forgets region `id` (its next call asks the coordinator).
    pub fn remove(&mut self, id: u64) {
        self.by_start.retain(|_, r| r.id != id);
    }

    /// Records that store `store` leads region `id` (a `NotLeader` hint); a store the cache
    /// does not list among the region's voters is added (the membership changed).
    pub fn set_leader(&mut self, id: u64, store: u64) {
        if let Some(r) = self.by_start.values_mut().find(|r| r.id == id) {
            if !r.stores.contains(&store) {
                r.stores.push(store);
            }
            r.leader = Some(store);
        }
    }

    /// After `failed` did not serve region `id` (down, or not the leader and no hint): the
    /// next voter after it becomes the one to try.
    pub fn rotate(&mut self, id: u64, failed: u64) {
        if let Some(r) = self.by_start.values_mut().find(|r| r.id == id) {
            let n = r.stores.len();
            if n == 0 {
                r.leader = None;
                return;
            }
            let at = r.stores.iter().position(|&s| s == failed).unwrap_or(n - 1);
            r.leader = Some(r.stores[(at + 1) % n]);
        }
    }

    /// The RPC address of store `id`, if known.
    pub fn addr(&self, id: u64) -> Option<&str> {
        self.addrs.get(&id).map(String::as_str)
    }

    /// Records the RPC address of store `id`.
    pub fn set_addr(&mut self, id: u64, addr: String) {
        self.addrs.insert(id, addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nokv_coordinator::proto::{Peer, Region, StoreMeta};

    fn route(id: u64, start: &[u8], end: &[u8], stores: &[u64], leader: Option<u64>) -> Route {
        let peers: Vec<Peer> = stores
            .iter()
            .map(|&s| Peer {
                id: id * 10 + s,
                store_id: s,
                core: Some(0),
                learner: false,
            })
            .collect();
        Route {
            region: Some(Region {
                id,
                start_key: start.to_vec(),
                end_key: end.to_vec(),
                epoch_version: 1,
                epoch_conf_version: 1,
                peers,
            }),
            leader_peer_id: leader.map_or(0, |s| id * 10 + s),
            stores: stores
                .iter()
                .map(|&s| StoreMeta {
                    id: s,
                    rpc_addr: format!("127.0.0.1:{}", 7000 + s),
                    ..StoreMeta::default()
                })
                .collect(),
            approximate_size_bytes: None,
        }
    }

    fn three_regions() -> RouteCache {
        let mut c = RouteCache::new();
        let a = 0x1000u16.to_be_bytes();
        let b = 0x2000u16.to_be_bytes();
        c.replace_all(&[
            route(1, b"", &a, &[1, 2, 3], Some(2)),
            route(2, &a, &b, &[1, 2, 3], None),
            route(3, &b, b"", &[2, 3, 4], Some(4)),
        ]);
        c
    }

    #[test]
    fn keys_map_to_the_region_holding_their_slot() {
        let c = three_regions();
        assert!(c.is_complete());
        assert_eq!(c.len(), 3);
        assert_eq!(c.lookup(&[0, 0]).map(|r| r.id), Some(1));
        assert_eq!(c.lookup(&0x0fffu16.to_be_bytes()).map(|r| r.id), Some(1));
        assert_eq!(c.lookup(&0x1000u16.to_be_bytes()).map(|r| r.id), Some(2));
        assert_eq!(c.lookup(&0x3fffu16.to_be_bytes()).map(|r| r.id), Some(3));
        for k in [b"a".as_slice(), b"foo", b"{user1}x", b""] {
            let slot = nokv_gateway::model::slot(k);
            let id = c.lookup(&routing_key(k)).map(|r| r.id);
            let want = if slot < 0x1000 {
                1
            } else if slot < 0x2000 {
                2
            } else {
                3
            };
            assert_eq!(id, Some(want), "key {k:?} slot {slot}");
        }
        assert_eq!(routing_key(b"{t}a"), routing_key(b"{t}b"));
        assert_eq!(c.addr(4), Some("127.0.0.1:7004"));
    }

    #[test]
    fn leaders_follow_hints_and_rotate_over_voters() {
        let mut c = three_regions();
        assert_eq!(c.region(1).and_then(RegionRoute::target), Some(2));
        assert_eq!(c.region(2).and_then(RegionRoute::target), Some(1));
        c.set_leader(2, 3);
        assert_eq!(c.region(2).and_then(|r| r.leader), Some(3));
        c.rotate(2, 3);
        assert_eq!(c.region(2).and_then(|r| r.leader), Some(1));
        c.rotate(2, 1);
        assert_eq!(c.region(2).and_then(|r| r.leader), Some(2));
        // A hint naming a store the cache does not know for the region joins its voters.
        c.set_leader(1, 9);
        let r = c.region(1).expect("region 1");
        assert_eq!((r.leader, r.stores.clone()), (Some(9), vec![1, 2, 3, 9]));
    }

    #[test]
    fn a_newer_route_replaces_what_it_overlaps() {
        let mut c = three_regions();
        // Region 2 split: region 2 keeps [0x1000, 0x1800), region 5 takes the rest.
        let mid = 0x1800u16.to_be_bytes();
        c.insert_route(&route(
            5,
            &mid,
            &0x2000u16.to_be_bytes(),
            &[1, 2, 3],
            Some(1),
        ));
        assert_eq!(c.lookup(&0x1000u16.to_be_bytes()).map(|r| r.id), None);
        assert!(!c.is_complete());
        c.insert_route(&route(
            2,
            &0x1000u16.to_be_bytes(),
            &mid,
            &[1, 2, 3],
            Some(1),
        ));
        assert!(c.is_complete());
        assert_eq!(c.lookup(&0x1900u16.to_be_bytes()).map(|r| r.id), Some(5));
        let order: Vec<u64> = c.regions().map(|r| r.id).collect();
        assert_eq!(order, vec![1, 2, 5, 3]);
        let r2 = c.region(2).expect("region 2").clone();
        assert_eq!(c.next(&r2).map(|r| r.id), Some(5));
        c.remove(5);
        assert_eq!(c.lookup(&0x1900u16.to_be_bytes()), None);
        let last = c.region(3).expect("region 3").clone();
        assert_eq!(c.next(&last), None);
    }
}

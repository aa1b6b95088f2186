//! Placement: which (store, core) gets a new replica. Pure functions over a snapshot of
//! the stores' figures.
//!
//! Rules: only stores that are up; never a second replica of a region on one store, nor on
//! two stores with the same `host` label (a store without one shares a host with none); the
//! least-loaded store first (fewest replicas recorded by the coordinator, then the store's
//! reported load, then the lowest id), and on it the least-loaded core (fewest replicas,
//! then reported load, then the lowest index). Replica counts come from the coordinator's
//! own catalog, so placements made one after another (a bootstrap of many regions) spread
//! even before any heartbeat reports them.

use crate::error::{Error, Result};

/// One store as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreCandidate {
    /// Store id.
    pub store_id: u64,
    /// Whether the store is up (down stores get nothing).
    pub up: bool,
    /// Replicas the catalog records on the store.
    pub replicas: u64,
    /// The store's reported load.
    pub load: u64,
    /// Per core: (replicas recorded on the core, reported load); its length is the core count.
    pub cores: Vec<(u64, u64)>,
    /// The store's `host` label (`None`: not labelled).
    pub host: Option<String>,
}

/// Where a replica goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The store.
    pub store_id: u64,
    /// The core of the store.
    pub core: u32,
}

/// The least-loaded core of a store (`None`: the store has no cores).
pub fn pick_core(store: &StoreCandidate) -> Option<u32> {
    store
        .cores
        .iter()
        .enumerate()
        .min_by_key(|(i, (replicas, load))| (*replicas, *load, *i))
        .map(|(i, _)| i as u32)
}

/// Places `count` replicas of one region: distinct stores, none in `exclude` (stores that
/// already hold the region), no two on one `host` label nor on the host of a store in
/// `exclude`, least loaded first. `NotEnoughStores` if too few qualify.
pub fn place(stores: &[StoreCandidate], exclude: &[u64], count: usize) -> Result<Vec<Placement>> {
    place_by(stores, exclude, count, |s| (s.replicas, s.load, s.store_id))
}

/// [`place`] with the stores preferred in the order of `key` (smallest first) instead of
/// the fewest replicas.
pub fn place_by<K: Ord>(
    stores: &[StoreCandidate],
    exclude: &[u64],
    count: usize,
    key: impl Fn(&StoreCandidate) -> K,
) -> Result<Vec<Placement>> {
    let mut eligible: Vec<&StoreCandidate> = stores
        .iter()
        .filter(|s| s.up && !s.cores.is_empty() && !exclude.contains(&s.store_id))
        .collect();
    eligible.sort_by_key(|s| key(s));
    // A store listed twice counts once (its least-loaded entry); a host holds one replica.
    let mut seen = std::collections::HashSet::new();
    let mut hosts: std::collections::HashSet<&str> = stores
        .iter()
        .filter(|s| exclude.contains(&s.store_id))
        .filter_map(|s| s.host.as_deref())
        .collect();
    eligible
        .retain(|s| seen.insert(s.store_id) && s.host.as_deref().is_none_or(|h| hosts.insert(h)));
    if eligible.len() < count {
        return Err(Error::NotEnoughStores {
            need: count,
            have: eligible.len(),
        });
    }
    Ok(eligible
        .iter()
        .take(count)
        .filter_map(|s| {
            pick_core(s).map(|core| Placement {
                store_id: s.store_id,
                core,
            })
        })
        .collect())
}

/// Records placements in the candidates so that the next [`place`] sees them.
pub fn record(stores: &mut [StoreCandidate], placed: &[Placement]) {
    for p in placed {
        if let Some(s) = stores.iter_mut().find(|s| s.store_id == p.store_id) {
            s.replicas += 1;
            if let Some(c) = s.cores.get_mut(p.core as usize) {
                c.0 += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn store(id: u64, replicas: u64, cores: usize) -> StoreCandidate {
        StoreCandidate {
            store_id: id,
            up: true,
            replicas,
            load: 0,
            cores: vec![(0, 0); cores],
            host: None,
        }
    }

    fn on_host(mut s: StoreCandidate, host: &str) -> StoreCandidate {
        s.host = Some(host.into());
        s
    }

    #[test]
    fn no_two_replicas_on_stores_of_one_host() {
        // Stores 1 and 2 share host a (1 is the least loaded), 3 and 4 host b, 5 has no
        // label: three replicas go to one store of each host and the unlabelled one.
        let stores = [
            on_host(store(1, 0, 1), "a"),
            on_host(store(2, 1, 1), "a"),
            on_host(store(3, 2, 1), "b"),
            on_host(store(4, 3, 1), "b"),
            store(5, 9, 1),
        ];
        let ids = |p: Vec<Placement>| p.iter().map(|p| p.store_id).collect::<Vec<_>>();
        assert_eq!(ids(place(&stores, &[], 3).expect("place")), vec![1, 3, 5]);
        // Only three hosts: a fourth replica has nowhere to go.
        assert!(matches!(
            place(&stores, &[], 4),
            Err(Error::NotEnoughStores { need: 4, have: 3 })
        ));
        // A region on store 2 (host a) and store 5: a new replica avoids host a.
        assert_eq!(ids(place(&stores, &[2, 5], 1).expect("place")), vec![3]);
        // Unlabelled stores share a host with none.
        let plain = [store(1, 0, 1), store(2, 0, 1), store(3, 0, 1)];
        assert_eq!(ids(place(&plain, &[1], 2).expect("place")), vec![2, 3]);
    }

    #[test]
    fn least_loaded_stores_and_cores_come_first() {
        let mut a = store(1, 5, 2);
        a.cores = vec![(3, 0), (2, 0)];
        let mut b = store(2, 1, 4);
        b.cores = vec![(1, 9), (0, 5), (0, 1), (1, 0)];
        let c = store(3, 3, 1);
        let got = place(&[a, b, c], &[], 2).expect("place");
        assert_eq!(
            got,
            vec![
                Placement {
                    store_id: 2,
                    core: 2
                },
                Placement {
                    store_id: 3,
                    core: 0
                }
            ]
        );
    }

    #[test]
    fn down_excluded_and_coreless_stores_get_nothing() {
        let mut down = store(1, 0, 2);
        down.up = false;
        let stores = [down, store(2, 0, 2), store(3, 0, 0), store(4, 9, 1)];
        let got = place(&stores, &[2], 1).expect("place");
        assert_eq!(
            got,
            vec![Placement {
                store_id: 4,
                core: 0
            }]
        );
        assert!(matches!(
            place(&stores, &[2], 2),
            Err(Error::NotEnoughStores { need: 2, have: 1 })
        ));
    }

    #[test]
    fn many_regions_spread_evenly_over_stores_and_cores() {
        let mut stores = vec![
            store(1, 0, 2),
            store(2, 0, 2),
            store(3, 0, 2),
            store(4, 0, 2),
        ];
        for _ in 0..40 {
            let p = place(&stores, &[], 3).expect("place");
            record(&mut stores, &p);
        }
        for s in &stores {
            assert_eq!(s.replicas, 30);
            assert_eq!(s.cores, vec![(15, 0), (15, 0)]);
        }
    }

    proptest! {
        #[test]
        fn never_two_replicas_on_one_store(
            figures in proptest::collection::vec((1u64..20, any::<bool>(), 0u64..10, 0u64..100, 0usize..5, proptest::option::of(0u8..4)), 0..12),
            exclude in proptest::collection::vec(1u64..20, 0..4),
            count in 1usize..6,
        ) {
            let mut ids_seen = HashSet::new();
            let stores: Vec<StoreCandidate> = figures.iter().filter(|f| ids_seen.insert(f.0)).map(|&(id, up, replicas, load, cores, host)| StoreCandidate {
                store_id: id, up, replicas, load, cores: (0..cores).map(|c| (c as u64 % 3, load % 7)).collect(),
                host: host.map(|h| format!("h{h}")),
            }).collect();
            let host_of = |id: u64| stores.iter().find(|s| s.store_id == id).and_then(|s| s.host.clone());
            match place(&stores, &exclude, count) {
                Ok(got) => {
                    prop_assert_eq!(got.len(), count);
                    let ids: HashSet<u64> = got.iter().map(|p| p.store_id).collect();
                    prop_assert_eq!(ids.len(), count, "two replicas on one store");
                    let mut hosts: Vec<String> = exclude.iter().filter_map(|id| host_of(*id)).collect();
                    hosts.sort();
                    hosts.dedup();
                    for p in &got {
                        if let Some(h) = host_of(p.store_id) {
                            prop_assert!(!hosts.contains(&h), "two replicas on host {}", h);
                            hosts.push(h);
                        }
                    }
                    for p in &got {
                        prop_assert!(!exclude.contains(&p.store_id));
                        let s = stores.iter().find(|s| s.store_id == p.store_id && s.up && !s.cores.is_empty());
                        prop_assert!(s.is_some());
                        let s = s.unwrap();
                        prop_assert!((p.core as usize) < s.cores.len());
                    }
                    // Nothing left out was less loaded than something chosen.
                    let worst = got.iter().filter_map(|p| stores.iter().find(|s| s.store_id == p.store_id)).map(|s| (s.replicas, s.load)).max();
                    // (a store left out for its host being taken aside)
                    for s in stores.iter().filter(|s| s.up && !s.cores.is_empty() && !exclude.contains(&s.store_id) && !ids.contains(&s.store_id) && s.host.as_ref().is_none_or(|h| !hosts.contains(h))) {
                        prop_assert!(Some((s.replicas, s.load)) >= worst);
                    }
                }
                Err(Error::NotEnoughStores { need, have }) => {
                    prop_assert_eq!(need, count);
                    prop_assert!(have < count);
                }
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }
    }
}

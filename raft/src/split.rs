//! Region splits: a raft admin entry that cuts a region in two at a key.
//!
//! The leader proposes a [`SplitRequest`] (the split key, the new region's id and one new
//! peer id per replica, and the epoch it saw). Every replica applies the committed entry at
//! the same index `I`: the parent keeps `[start, split)`, the child takes `[split, end)`
//! with the same stores, both at epoch version + 1. The child's log starts at `(I, term of
//! I)` on every replica, so its first entry is `I + 1` and MVCC versions (raft indexes) keep
//! growing per key. Data does not move: parent and child share the core's engine.
//!
//! A request whose epoch no longer matches (another split, a membership change applied
//! first) is refused on every replica alike: splits and conf changes are serialised by the
//! region's epoch.

use crate::codec::{put_bytes, put_u64, Reader};
use crate::error::{Error, Result};
use crate::region::{Epoch, PeerMeta, RegionDescriptor};

/// First bytes of a split entry (write commands start with their format byte, 1).
const SPLIT_MAGIC: &[u8] = b"\xC6nokv-split";

/// What a split proposal carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitRequest {
    /// The first key of the new region (the parent keeps the keys below it).
    pub split_key: Vec<u8>,
    /// The new region's id.
    pub new_region: u64,
    /// The new region's peer id on each store of the parent: `(store, peer)`.
    pub new_peers: Vec<(u64, u64)>,
    /// The parent's epoch when the split was proposed.
    pub epoch: Epoch,
}

impl SplitRequest {
    /// The raft entry payload: `magic | version | conf_version | key | new region |
    /// count | (store, peer)*`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = SPLIT_MAGIC.to_vec();
        put_u64(&mut out, self.epoch.version);
        put_u64(&mut out, self.epoch.conf_version);
        put_bytes(&mut out, &self.split_key);
        put_u64(&mut out, self.new_region);
        put_u64(&mut out, self.new_peers.len() as u64);
        for (store, peer) in &self.new_peers {
            put_u64(&mut out, *store);
            put_u64(&mut out, *peer);
        }
        out
    }

    /// Decodes [`SplitRequest::encode`]'s output (None: not a split entry).
    pub fn decode(data: &[u8]) -> Option<Result<SplitRequest>> {
        let body = data.strip_prefix(SPLIT_MAGIC)?;
        Some(Self::decode_body(body))
    }

    fn decode_body(body: &[u8]) -> Result<SplitRequest> {
        let mut r = Reader::new(body, "split entry");
        let epoch = Epoch {
            version: r.u64()?,
            conf_version: r.u64()?,
        };
        let split_key = r.bytes()?.to_vec();
        let new_region = r.u64()?;
        let n = r.u64()?;
        if n > 64 {
            return Err(Error::Corrupt {
                what: "split entry",
                detail: format!("{n} peers"),
            });
        }
        let mut new_peers = Vec::with_capacity(n as usize);
        for _ in 0..n {
            new_peers.push((r.u64()?, r.u64()?));
        }
        r.finish()?;
        Ok(SplitRequest {
            split_key,
            new_region,
            new_peers,
            epoch,
        })
    }

    /// The parent and the child after this split of `parent`; refused (the same way on
    /// every replica) when the epoch moved, the key is not strictly inside the range, or the
    /// new peers do not name each store of the parent once.
    pub fn apply_to(
        &self,
        parent: &RegionDescriptor,
    ) -> Result<(RegionDescriptor, RegionDescriptor)> {
        let refuse = |reason: String| Error::InvalidProposal {
            region: parent.id,
            reason,
        };
        parent.check_epoch(&self.epoch)?;
        if self.split_key.as_slice() <= parent.start_key.as_slice()
            || !parent.contains(&self.split_key)
        {
            return Err(refuse(format!(
                "split key {:?} is not strictly inside [{:?}, {:?})",
                self.split_key, parent.start_key, parent.end_key
            )));
        }
        if self.new_region == parent.id || self.new_region == 0 {
            return Err(refuse(format!("bad new region id {}", self.new_region)));
        }
        let mut peers = Vec::with_capacity(parent.peers.len());
        for p in &parent.peers {
            let mut named = self.new_peers.iter().filter(|(s, _)| *s == p.store_id);
            let (Some(&(_, id)), None) = (named.next(), named.next()) else {
                return Err(refuse(format!(
                    "the split names store {} not exactly once",
                    p.store_id
                )));
            };
            if id == 0 || parent.peer(id).is_some() {
                return Err(refuse(format!("bad new peer id {id}")));
            }
            peers.push(PeerMeta {
                store_id: p.store_id,
                peer_id: id,
                role: p.role,
            });
        }
        if self.new_peers.len() != parent.peers.len() {
            return Err(refuse(
                "the split names stores the region has no replica on".into(),
            ));
        }
        let Some(version) = parent.epoch.version.checked_add(1) else {
            return Err(refuse(
                "the region's epoch version is at its maximum".into(),
            ));
        };
        let epoch = Epoch {
            version,
            conf_version: parent.epoch.conf_version,
        };
        let child = RegionDescriptor {
            id: self.new_region,
            start_key: self.split_key.clone(),
            end_key: parent.end_key.clone(),
            epoch,
            peers,
        };
        let mut left = parent.clone();
        left.end_key = self.split_key.clone();
        left.epoch = epoch;
        Ok((left, child))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parent() -> RegionDescriptor {
        RegionDescriptor {
            id: 3,
            start_key: vec![0, 10],
            end_key: vec![0, 20],
            epoch: Epoch {
                version: 4,
                conf_version: 7,
            },
            peers: vec![PeerMeta::voter(1, 30), PeerMeta::learner(2, 31)],
        }
    }

    fn request() -> SplitRequest {
        SplitRequest {
            split_key: vec![0, 15],
            new_region: 9,
            new_peers: vec![(2, 91), (1, 90)],
            epoch: parent().epoch,
        }
    }

    /// Found while writing the `split_request` fuzz target: a parent at the largest epoch
    /// version (from a descriptor on disk or in a snapshot) made every replica panic
    /// applying a split whose epoch matched; it is refused like any other bad split.
    #[test]
    fn a_split_of_a_region_at_the_largest_version_is_refused() {
        let mut p = parent();
        p.epoch.version = u64::MAX;
        let mut r = request();
        r.epoch = p.epoch;
        match r.apply_to(&p) {
            Err(Error::InvalidProposal { reason, .. }) => {
                assert!(reason.contains("epoch version"), "{reason}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_split_cuts_the_range_and_bumps_both_versions() {
        let (left, child) = request().apply_to(&parent()).expect("split");
        assert_eq!(
            (left.start_key.clone(), left.end_key.clone()),
            (vec![0, 10], vec![0, 15])
        );
        assert_eq!(
            (child.start_key.clone(), child.end_key.clone()),
            (vec![0, 15], vec![0, 20])
        );
        assert_eq!(
            left.epoch,
            Epoch {
                version: 5,
                conf_version: 7
            }
        );
        assert_eq!(child.epoch, left.epoch);
        assert_eq!(child.id, 9);
        assert_eq!(
            child.peers,
            vec![PeerMeta::voter(1, 90), PeerMeta::learner(2, 91)]
        );
        assert_eq!(left.peers, parent().peers);
    }

    #[test]
    fn stale_or_malformed_splits_are_refused() {
        let p = parent();
        let mut stale = request();
        stale.epoch.conf_version = 6;
        assert!(matches!(
            stale.apply_to(&p),
            Err(Error::EpochNotMatch { .. })
        ));
        for key in [vec![0, 10], vec![0, 9], vec![0, 20], vec![1]] {
            let r = SplitRequest {
                split_key: key,
                ..request()
            };
            assert!(r.apply_to(&p).is_err());
        }
        let missing = SplitRequest {
            new_peers: vec![(1, 90)],
            ..request()
        };
        assert!(missing.apply_to(&p).is_err());
        let twice = SplitRequest {
            new_peers: vec![(1, 90), (1, 92)],
            ..request()
        };
        assert!(twice.apply_to(&p).is_err());
        let extra = SplitRequest {
            new_peers: vec![(1, 90), (2, 91), (5, 95)],
            ..request()
        };
        assert!(extra.apply_to(&p).is_err());
        let reused = SplitRequest {
            new_peers: vec![(1, 30), (2, 91)],
            ..request()
        };
        assert!(reused.apply_to(&p).is_err());
        let same_id = SplitRequest {
            new_region: 3,
            ..request()
        };
        assert!(same_id.apply_to(&p).is_err());
        assert!(SplitRequest::decode(b"\x01not a split").is_none());
    }

    proptest! {
        #[test]
        fn split_entries_round_trip(
            key in proptest::collection::vec(any::<u8>(), 0..40),
            region in any::<u64>(),
            peers in proptest::collection::vec((any::<u64>(), any::<u64>()), 0..8),
            version in any::<u64>(),
            conf_version in any::<u64>(),
        ) {
            let r = SplitRequest {
                split_key: key,
                new_region: region,
                new_peers: peers,
                epoch: Epoch { version, conf_version },
            };
            let enc = r.encode();
            prop_assert_eq!(SplitRequest::decode(&enc).expect("a split").expect("decodes"), r);
            for cut in 0..enc.len() {
                if let Some(d) = SplitRequest::decode(&enc[..cut]) {
                    prop_assert!(d.is_err());
                }
            }
        }
    }
}

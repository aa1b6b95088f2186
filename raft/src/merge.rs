//! Region merges: two adjacent regions with the same stores become one, through three raft
//! admin entries.
//!
//! 1. [`PrepareMerge`] in the **source**'s log (index `P`): from its apply on, the source
//!    takes no proposal and no membership change (its epoch version grows, so a write
//!    proposed before it and committed after is skipped on every replica alike); the
//!    state is persisted as a [`MergeState`].
//! 2. [`CommitMerge`] in the **target**'s log (index `C > P`, the leader pads its log with
//!    empty entries first when needed: MVCC versions are raft indexes, so the target's
//!    next writes must be newer than every write the source applied). A replica applies it
//!    only once its own source replica has applied `P`; until then the target's committed
//!    entries wait on that replica (in memory; a restart replays them). Applying it
//!    widens the target's range over the source's, bumps its epoch version past both, and
//!    removes the source: descriptor, merge state and the target's applied index go to the
//!    engine in one batch. No data moves: both regions' replicas on a store share a core.
//! 3. [`RollbackMerge`] in the source's log when the commit cannot happen (the target's
//!    epoch moved): the source takes proposals again.

use crate::codec::{put_bytes, put_u64, Reader};
use crate::error::{Error, Result};
use crate::region::{Epoch, RegionDescriptor, META_SPACE};
use nokv::{Db, ReadOptions, WriteBatch};
use std::collections::BTreeMap;

const PREPARE_MAGIC: &[u8] = b"\xC6nokv-merge-prepare";
const COMMIT_MAGIC: &[u8] = b"\xC6nokv-merge-commit";
const ROLLBACK_MAGIC: &[u8] = b"\xC6nokv-merge-rollback";
/// Prefix of merge-state keys in [`META_SPACE`]; followed by the source region id (u64 BE).
const MERGE_KEY_PREFIX: &[u8] = b"merging/";

/// A source region's merge in progress (persisted from the apply of its [`PrepareMerge`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeState {
    /// The region it merges into.
    pub target: u64,
    /// Index of the prepare entry in the source's log.
    pub prepared_at: u64,
}

/// First step, proposed to the source: stop taking writes, to merge into `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareMerge {
    /// The region the source merges into.
    pub target: u64,
    /// The source's epoch when proposed.
    pub epoch: Epoch,
}

/// Second step, proposed to the target: take over the prepared source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitMerge {
    /// The source's descriptor after its prepare.
    pub source: RegionDescriptor,
    /// Index of the source's prepare entry.
    pub prepared_at: u64,
    /// Term of the source's prepare entry (a replica whose source log holds it there
    /// holds the same log up to it, and may count it committed).
    pub prepared_term: u64,
    /// The target's epoch when proposed.
    pub epoch: Epoch,
}

/// Undo of a prepare whose commit cannot happen, proposed to the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackMerge {
    /// Index of the source's prepare entry.
    pub prepared_at: u64,
    /// The source's epoch (after its prepare) when proposed.
    pub epoch: Epoch,
}

/// A decoded merge entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeEntry {
    /// [`PrepareMerge`].
    Prepare(PrepareMerge),
    /// [`CommitMerge`].
    Commit(CommitMerge),
    /// [`RollbackMerge`].
    Rollback(RollbackMerge),
}

impl MergeEntry {
    /// The raft entry payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out;
        match self {
            MergeEntry::Prepare(p) => {
                out = PREPARE_MAGIC.to_vec();
                put_epoch(&mut out, p.epoch);
                put_u64(&mut out, p.target);
            }
            MergeEntry::Commit(c) => {
                out = COMMIT_MAGIC.to_vec();
                put_epoch(&mut out, c.epoch);
                put_u64(&mut out, c.prepared_at);
                put_u64(&mut out, c.prepared_term);
                put_bytes(&mut out, &c.source.encode());
            }
            MergeEntry::Rollback(r) => {
                out = ROLLBACK_MAGIC.to_vec();
                put_epoch(&mut out, r.epoch);
                put_u64(&mut out, r.prepared_at);
            }
        }
        out
    }

    /// Decodes [`MergeEntry::encode`]'s output (None: not a merge entry).
    pub fn decode(data: &[u8]) -> Option<Result<MergeEntry>> {
        if let Some(body) = data.strip_prefix(PREPARE_MAGIC) {
            return Some((|| {
                let mut r = Reader::new(body, "merge prepare entry");
                let epoch = read_epoch(&mut r)?;
                let target = r.u64()?;
                r.finish()?;
                Ok(MergeEntry::Prepare(PrepareMerge { target, epoch }))
            })());
        }
        if let Some(body) = data.strip_prefix(COMMIT_MAGIC) {
            return Some((|| {
                let mut r = Reader::new(body, "merge commit entry");
                let epoch = read_epoch(&mut r)?;
                let prepared_at = r.u64()?;
                let prepared_term = r.u64()?;
                let source = RegionDescriptor::decode(r.bytes()?)?;
                r.finish()?;
                Ok(MergeEntry::Commit(CommitMerge {
                    source,
                    prepared_at,
                    prepared_term,
                    epoch,
                }))
            })());
        }
        if let Some(body) = data.strip_prefix(ROLLBACK_MAGIC) {
            return Some((|| {
                let mut r = Reader::new(body, "merge rollback entry");
                let epoch = read_epoch(&mut r)?;
                let prepared_at = r.u64()?;
                r.finish()?;
                Ok(MergeEntry::Rollback(RollbackMerge { prepared_at, epoch }))
            })());
        }
        None
    }
}

fn put_epoch(out: &mut Vec<u8>, e: Epoch) {
    put_u64(out, e.version);
    put_u64(out, e.conf_version);
}

fn read_epoch(r: &mut Reader<'_>) -> Result<Epoch> {
    Ok(Epoch {
        version: r.u64()?,
        conf_version: r.u64()?,
    })
}

/// `region`'s epoch with the version one higher; refused at the largest version.
fn next_version(region: &RegionDescriptor, at_least: u64) -> Result<Epoch> {
    let Some(version) = region.epoch.version.max(at_least).checked_add(1) else {
        return Err(Error::InvalidProposal {
            region: region.id,
            reason: "the region's epoch version is at its maximum".into(),
        });
    };
    Ok(Epoch {
        version,
        conf_version: region.epoch.conf_version,
    })
}

impl PrepareMerge {
    /// The source after the prepare (epoch version + 1); refused when its epoch moved.
    pub fn apply_to(&self, source: &RegionDescriptor) -> Result<RegionDescriptor> {
        source.check_epoch(&self.epoch)?;
        if self.target == source.id || self.target == 0 {
            return Err(Error::InvalidProposal {
                region: source.id,
                reason: format!("bad merge target {}", self.target),
            });
        }
        let mut out = source.clone();
        out.epoch = next_version(source, 0)?;
        Ok(out)
    }
}

/// Whether `a` and `b` hold replicas on the same stores with the same roles.
fn same_replicas(a: &RegionDescriptor, b: &RegionDescriptor) -> bool {
    let stores = |d: &RegionDescriptor| {
        let mut v: Vec<_> = d.peers.iter().map(|p| (p.store_id, p.role)).collect();
        v.sort_by_key(|(s, _)| *s);
        v
    };
    stores(a) == stores(b)
}

/// Checks that `source` can merge into `target`: adjacent ranges, the same replicas.
pub fn check_mergeable(target: &RegionDescriptor, source: &RegionDescriptor) -> Result<()> {
    let refuse = |reason: String| Error::InvalidProposal {
        region: target.id,
        reason,
    };
    if source.id == target.id {
        return Err(refuse("a region cannot merge with itself".into()));
    }
    let after = !target.end_key.is_empty() && target.end_key == source.start_key;
    let before = !source.end_key.is_empty() && source.end_key == target.start_key;
    if !after && !before {
        return Err(refuse(format!(
            "region {} [{:?}, {:?}) is not adjacent to [{:?}, {:?})",
            source.id, source.start_key, source.end_key, target.start_key, target.end_key
        )));
    }
    if !same_replicas(target, source) {
        return Err(refuse(format!(
            "region {} has replicas on other stores (or in other roles)",
            source.id
        )));
    }
    Ok(())
}

impl CommitMerge {
    /// The target after taking the source over at log index `index`; refused (the same
    /// way on every replica) when the target's epoch moved, the ranges are not adjacent,
    /// the replicas differ, or `index` is not past the source's prepare (versions).
    pub fn apply_to(&self, target: &RegionDescriptor, index: u64) -> Result<RegionDescriptor> {
        target.check_epoch(&self.epoch)?;
        check_mergeable(target, &self.source)?;
        if index <= self.prepared_at {
            return Err(Error::InvalidProposal {
                region: target.id,
                reason: format!(
                    "the merge entry's index {index} is not past the source's prepare at {}",
                    self.prepared_at
                ),
            });
        }
        let mut out = target.clone();
        if !self.source.end_key.is_empty() && self.source.end_key == target.start_key {
            out.start_key = self.source.start_key.clone();
        } else {
            out.end_key = self.source.end_key.clone();
        }
        out.epoch = next_version(target, self.source.epoch.version)?;
        Ok(out)
    }
}

impl RollbackMerge {
    /// The source after the rollback (epoch version + 1); refused when its epoch moved or
    /// it is not prepared at `prepared_at`.
    pub fn apply_to(
        &self,
        source: &RegionDescriptor,
        state: Option<MergeState>,
    ) -> Result<RegionDescriptor> {
        source.check_epoch(&self.epoch)?;
        if state.map(|s| s.prepared_at) != Some(self.prepared_at) {
            return Err(Error::InvalidProposal {
                region: source.id,
                reason: format!("no merge prepared at {}", self.prepared_at),
            });
        }
        let mut out = source.clone();
        out.epoch = next_version(source, 0)?;
        Ok(out)
    }
}

/// The key of `region`'s merge state in [`META_SPACE`].
pub fn merge_key(region: u64) -> Vec<u8> {
    let mut k = MERGE_KEY_PREFIX.to_vec();
    k.extend_from_slice(&region.to_be_bytes());
    k
}

impl MergeState {
    /// `target | prepared_at`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        put_u64(&mut out, self.target);
        put_u64(&mut out, self.prepared_at);
        out
    }

    /// Decodes [`MergeState::encode`]'s output.
    pub fn decode(buf: &[u8]) -> Result<MergeState> {
        let mut r = Reader::new(buf, "merge state");
        let target = r.u64()?;
        let prepared_at = r.u64()?;
        r.finish()?;
        Ok(MergeState {
            target,
            prepared_at,
        })
    }
}

/// Adds the write of `region`'s merge state (None: its removal) to `batch`.
pub fn put_merge_state(batch: &mut WriteBatch, region: u64, state: Option<MergeState>) {
    match state {
        Some(s) => batch.put_in(META_SPACE, &merge_key(region), &s.encode()),
        None => batch.delete_in(META_SPACE, &merge_key(region)),
    };
}

/// Every persisted merge state of the engine, by source region.
pub fn load_merge_states(db: &Db) -> Result<BTreeMap<u64, MergeState>> {
    let mut out = BTreeMap::new();
    let ro = ReadOptions {
        prefix: Some(MERGE_KEY_PREFIX.to_vec()),
        ..Default::default()
    };
    let mut it = db
        .iter_in(META_SPACE, ro)
        .map_err(|e| Error::engine("read merge states", e))?;
    it.seek_to_first();
    // Bounded by the number of persisted merge states.
    while it.valid() {
        let Some(id) = it.key().strip_prefix(MERGE_KEY_PREFIX) else {
            break;
        };
        let Ok(id) = <[u8; 8]>::try_from(id) else {
            return Err(Error::Corrupt {
                what: "merge state key",
                detail: format!("{:?}", it.key()),
            });
        };
        out.insert(u64::from_be_bytes(id), MergeState::decode(it.value())?);
        it.next();
    }
    it.status()
        .map_err(|e| Error::engine("read merge states", e))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::PeerMeta;
    use proptest::prelude::*;

    fn region(id: u64, start: &[u8], end: &[u8], version: u64) -> RegionDescriptor {
        RegionDescriptor {
            id,
            start_key: start.to_vec(),
            end_key: end.to_vec(),
            epoch: Epoch {
                version,
                conf_version: 3,
            },
            peers: vec![
                PeerMeta::voter(1, id.wrapping_mul(10) + 1),
                PeerMeta::voter(2, id.wrapping_mul(10) + 2),
            ],
        }
    }

    #[test]
    fn a_commit_widens_the_target_over_either_neighbour() {
        let target = region(1, b"b", b"d", 4);
        let right = PrepareMerge {
            target: 1,
            epoch: Epoch {
                version: 7,
                conf_version: 3,
            },
        }
        .apply_to(&region(2, b"d", b"", 7))
        .expect("prepare");
        assert_eq!(right.epoch.version, 8);
        let c = CommitMerge {
            source: right,
            prepared_at: 20,
            prepared_term: 2,
            epoch: target.epoch,
        };
        let merged = c.apply_to(&target, 21).expect("commit");
        assert_eq!(
            (merged.start_key.as_slice(), merged.end_key.as_slice()),
            (&b"b"[..], &b""[..])
        );
        assert_eq!(merged.epoch.version, 9, "past both versions");
        assert_eq!(merged.peers, target.peers);
        let left = region(3, b"", b"b", 2);
        let c = CommitMerge {
            source: left,
            prepared_at: 5,
            prepared_term: 2,
            epoch: target.epoch,
        };
        let merged = c.apply_to(&target, 6).expect("commit");
        assert_eq!(
            (merged.start_key.as_slice(), merged.end_key.as_slice()),
            (&b""[..], &b"d"[..])
        );
        assert_eq!(merged.epoch.version, 5);
    }

    #[test]
    fn commits_that_would_lose_or_mix_data_are_refused() {
        let target = region(1, b"b", b"d", 4);
        let source = region(2, b"d", b"f", 7);
        let ok = CommitMerge {
            source: source.clone(),
            prepared_at: 20,
            prepared_term: 2,
            epoch: target.epoch,
        };
        // Versions: the target's next write must be newer than the source's last.
        assert!(ok.apply_to(&target, 20).is_err());
        let mut stale = ok.clone();
        stale.epoch.version = 3;
        assert!(matches!(
            stale.apply_to(&target, 30),
            Err(Error::EpochNotMatch { .. })
        ));
        let gap = CommitMerge {
            source: region(2, b"e", b"f", 7),
            ..ok.clone()
        };
        assert!(gap.apply_to(&target, 30).is_err());
        let mut elsewhere = source.clone();
        elsewhere.peers[1].store_id = 9;
        let other_stores = CommitMerge {
            source: elsewhere,
            ..ok.clone()
        };
        assert!(other_stores.apply_to(&target, 30).is_err());
        let itself = CommitMerge {
            source: target.clone(),
            ..ok
        };
        assert!(itself.apply_to(&target, 30).is_err());
    }

    #[test]
    fn a_rollback_needs_the_prepare_it_names() {
        let source = region(2, b"d", b"f", 8);
        let r = RollbackMerge {
            prepared_at: 20,
            epoch: source.epoch,
        };
        let state = MergeState {
            target: 1,
            prepared_at: 20,
        };
        assert_eq!(
            r.apply_to(&source, Some(state))
                .expect("rollback")
                .epoch
                .version,
            9
        );
        assert!(r.apply_to(&source, None).is_err());
        let other = MergeState {
            prepared_at: 21,
            ..state
        };
        assert!(r.apply_to(&source, Some(other)).is_err());
    }

    proptest! {
        #[test]
        fn merge_entries_round_trip(
            target in any::<u64>(),
            version in any::<u64>(),
            conf_version in any::<u64>(),
            at in any::<u64>(),
            start in proptest::collection::vec(any::<u8>(), 0..12),
            which in 0u8..3,
        ) {
            let epoch = Epoch { version, conf_version };
            let e = match which {
                0 => MergeEntry::Prepare(PrepareMerge { target, epoch }),
                1 => MergeEntry::Commit(CommitMerge {
                    source: RegionDescriptor { start_key: start, ..region(target, b"", b"", 1) },
                    prepared_at: at,
                    prepared_term: version ^ at,
                    epoch,
                }),
                _ => MergeEntry::Rollback(RollbackMerge { prepared_at: at, epoch }),
            };
            let enc = e.encode();
            prop_assert_eq!(MergeEntry::decode(&enc).expect("a merge entry").expect("decodes"), e);
            for cut in 0..enc.len() {
                if let Some(d) = MergeEntry::decode(&enc[..cut]) {
                    prop_assert!(d.is_err());
                }
            }
            let s = MergeState { target, prepared_at: at };
            prop_assert_eq!(MergeState::decode(&s.encode()).expect("state"), s);
        }
    }
}

//! Every peer of one core, sharing one engine: proposals, poll rounds that
//! persist all peers' Ready in ONE WAL write, apply, and log truncation.
//!
//! A poll round ([`RaftCore::poll_round`]):
//!
//! 1. For each peer with a Ready: send the messages that need no persistence,
//!    apply the committed entries it carries (already persisted), and gather its
//!    new entries and hard state.
//! 2. One `Db::append_opaque` for all of them: one WAL write, one fdatasync
//!    (with `Durability::Sync`).
//! 3. For each peer: add the entries to its storage, send the messages that
//!    needed persistence, `advance`, apply what became committed, `advance_apply`.
//!
//! Applying an entry hands its data to [`Apply::apply`], which writes through
//! `Db::apply_unlogged(batch, Some((region, index)))`; after each peer's applies
//! the core records the last index with an empty unlogged batch, so that the flush
//! which makes the data durable also records how far the region is applied
//! (`Db::applied_index`, where a restart resumes).

use crate::codec::{self, TAG_CHECKPOINT, TAG_ENTRY, TAG_HARD_STATE};
use crate::error::{Error, Result};
use crate::region::{save_region, RegionDescriptor};
use crate::storage::{PeerStorage, ReplayedRegion};
use nokv::{Db, Durability, WriteBatch, WriteOptions};
use raft::prelude::{ConfState, Entry, EntryType, Message};
use raft::{RawNode, StateRole};
use std::collections::{BTreeMap, VecDeque};

/// Settings of a core's peers.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// This store's id (picks the local peer out of each descriptor).
    pub store_id: u64,
    /// Whether the WAL write of a round is fdatasync'ed before anything is acknowledged.
    pub durability: Durability,
    /// Raft ticks without a heartbeat before a follower campaigns.
    pub election_tick: usize,
    /// Raft ticks between leader heartbeats.
    pub heartbeat_tick: usize,
    /// Most proposals waiting to be applied per region.
    pub max_pending_proposals: usize,
    /// Largest proposal accepted (bytes); must stay below the engine's `max_batch_bytes`.
    pub max_proposal_bytes: usize,
    /// Bytes of raft records written per WAL append (a round above it takes several).
    pub max_round_bytes: usize,
    /// Applied entries kept in each peer's in-memory cache.
    pub max_cached_entries: usize,
    /// Bytes of applied entries kept in each peer's in-memory cache.
    pub max_cached_bytes: usize,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            store_id: 1,
            durability: Durability::Sync,
            election_tick: 10,
            heartbeat_tick: 3,
            max_pending_proposals: 4096,
            max_proposal_bytes: 20 << 20,
            max_round_bytes: 8 << 20,
            max_cached_entries: 1024,
            max_cached_bytes: 4 << 20,
        }
    }
}

/// What the owner of a core does with committed entries and outgoing messages.
pub trait Apply<T> {
    /// Applies the data of committed entry `index` of `region`; `token` is the
    /// proposer's when this entry is a proposal made through this core.
    fn apply(&mut self, region: &RegionDescriptor, index: u64, data: &[u8], token: Option<T>);
    /// A proposal that will never be applied.
    fn abandon(&mut self, token: T, error: Error);
    /// A raft message for another peer of `region` (no transport yet: single replica).
    fn send(&mut self, region: u64, msg: Message);
}

/// Counters of one poll round.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RoundStats {
    /// Peers that had a Ready.
    pub readies: usize,
    /// Records written to the WAL (in one append).
    pub records: usize,
    /// Entries applied.
    pub applied: usize,
}

struct Proposal<T> {
    index: u64,
    term: u64,
    token: T,
}

struct Peer<T> {
    region: RegionDescriptor,
    node: RawNode<PeerStorage>,
    pending: VecDeque<Proposal<T>>,
    applied: u64,
}

/// The peers of one core and the engine they share.
pub struct RaftCore<T> {
    db: Db,
    cfg: CoreConfig,
    peers: BTreeMap<u64, Peer<T>>,
    logger: slog::Logger,
}

fn conf_state(desc: &RegionDescriptor) -> ConfState {
    ConfState::from((
        desc.peers.iter().map(|p| p.peer_id).collect::<Vec<_>>(),
        vec![],
    ))
}

impl<T> RaftCore<T> {
    /// Opens the peers of `regions` from the replayed log and the engine's applied indexes.
    ///
    /// `db` must have been opened with `LogReplay::hook` as `opaque_replay`.
    pub fn open(
        db: Db,
        cfg: CoreConfig,
        regions: Vec<RegionDescriptor>,
        mut replayed: BTreeMap<u64, ReplayedRegion>,
    ) -> Result<RaftCore<T>> {
        // Keep every WAL segment that still exists until the first checkpoint moves
        // the floor to where the logs really start.
        db.set_opaque_floor(Some(0))
            .map_err(|e| Error::engine("retain the raft log", e))?;
        let mut core = RaftCore {
            db,
            cfg,
            peers: BTreeMap::new(),
            logger: crate::logger::logger(),
        };
        for desc in regions {
            let applied = core.db.applied_index(desc.id).unwrap_or(0);
            let log = replayed.remove(&desc.id).unwrap_or_default();
            let storage = PeerStorage::from_replay(conf_state(&desc), log, applied)?;
            core.add_peer(desc, storage, applied)?;
        }
        for region in replayed.keys() {
            tracing::warn!(region, "raft log records of an unknown region are ignored");
        }
        Ok(core)
    }

    /// Creates a new region here: persists its descriptor (synced), then starts its peer.
    pub fn create_region(&mut self, desc: RegionDescriptor) -> Result<()> {
        if self.peers.contains_key(&desc.id) {
            return Err(Error::InvalidProposal {
                region: desc.id,
                reason: "region exists".into(),
            });
        }
        save_region(&self.db, &desc)?;
        let storage = PeerStorage::new(conf_state(&desc));
        self.add_peer(desc, storage, 0)
    }

    fn add_peer(
        &mut self,
        desc: RegionDescriptor,
        mut storage: PeerStorage,
        applied: u64,
    ) -> Result<()> {
        let region = desc.id;
        let Some(me) = desc.peer_on_store(self.cfg.store_id) else {
            return Err(Error::RegionNotFound(region));
        };
        storage.compact_cache(applied);
        let config = raft::Config {
            id: me.peer_id,
            election_tick: self.cfg.election_tick,
            heartbeat_tick: self.cfg.heartbeat_tick,
            applied,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            pre_vote: true,
            check_quorum: true,
            ..Default::default()
        };
        let logger = self.logger.new(slog::o!("region" => region));
        let mut node = RawNode::new(&config, storage, &logger)
            .map_err(|source| Error::Raft { region, source })?;
        if desc.peers.len() == 1 {
            // The only voter: no need to wait for an election timeout.
            node.campaign()
                .map_err(|source| Error::Raft { region, source })?;
        }
        self.peers.insert(
            region,
            Peer {
                region: desc,
                node,
                pending: VecDeque::new(),
                applied,
            },
        );
        Ok(())
    }

    /// The engine.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The descriptor of a region hosted here.
    pub fn region(&self, id: u64) -> Option<&RegionDescriptor> {
        self.peers.get(&id).map(|p| &p.region)
    }

    /// Regions hosted here, by id.
    pub fn regions(&self) -> impl Iterator<Item = &RegionDescriptor> {
        self.peers.values().map(|p| &p.region)
    }

    /// Whether the local peer of `region` leads it.
    pub fn is_leader(&self, region: u64) -> bool {
        self.peers
            .get(&region)
            .is_some_and(|p| p.node.raft.state == StateRole::Leader)
    }

    /// The last applied index of `region`.
    pub fn applied(&self, region: u64) -> Option<u64> {
        self.peers.get(&region).map(|p| p.applied)
    }

    /// Proposals waiting to be applied, over all regions.
    pub fn pending(&self) -> usize {
        self.peers.values().map(|p| p.pending.len()).sum()
    }

    /// Proposes `data` to `region`'s log; `token` comes back through [`Apply`].
    pub fn propose(
        &mut self,
        region: u64,
        data: Vec<u8>,
        token: T,
    ) -> std::result::Result<u64, (Error, T)> {
        let Some(peer) = self.peers.get_mut(&region) else {
            return Err((Error::RegionNotFound(region), token));
        };
        if peer.node.raft.state != StateRole::Leader {
            let leader = peer.node.raft.leader_id;
            return Err((
                Error::NotLeader {
                    region,
                    leader: (leader != 0).then_some(leader),
                },
                token,
            ));
        }
        if peer.pending.len() >= self.cfg.max_pending_proposals {
            let pending = peer.pending.len();
            return Err((Error::Busy { region, pending }, token));
        }
        if data.is_empty() || data.len() > self.cfg.max_proposal_bytes {
            let reason = format!(
                "{} bytes (must be 1..={})",
                data.len(),
                self.cfg.max_proposal_bytes
            );
            return Err((Error::InvalidProposal { region, reason }, token));
        }
        let before = peer.node.raft.raft_log.last_index();
        if let Err(source) = peer.node.propose(Vec::new(), data) {
            return Err((Error::Raft { region, source }, token));
        }
        let index = peer.node.raft.raft_log.last_index();
        if index == before {
            return Err((Error::ProposalDropped { region, index }, token));
        }
        let term = peer.node.raft.term;
        peer.pending.push_back(Proposal { index, term, token });
        Ok(index)
    }

    /// Advances every peer's logical clock by one tick.
    pub fn tick(&mut self) {
        for p in self.peers.values_mut() {
            p.node.tick();
        }
    }

    /// Whether any peer has work for [`RaftCore::poll_round`].
    pub fn has_ready(&self) -> bool {
        self.peers.values().any(|p| p.node.has_ready())
    }

    /// Runs one poll round (see the module docs). An error means the engine failed:
    /// the core must stop.
    pub fn poll_round(&mut self, apply: &mut dyn Apply<T>) -> Result<RoundStats> {
        let mut stats = RoundStats::default();
        let mut records: Vec<(u8, Vec<u8>)> = Vec::new();
        let mut readies = Vec::new();
        for (&id, peer) in self.peers.iter_mut() {
            if !peer.node.has_ready() {
                continue;
            }
            let mut rd = peer.node.ready();
            stats.readies += 1;
            for m in rd.take_messages() {
                apply.send(id, m);
            }
            if !rd.snapshot().is_empty() {
                return Err(Error::InvalidProposal {
                    region: id,
                    reason: "raft snapshots are not supported yet".into(),
                });
            }
            stats.applied += apply_entries(&self.db, peer, rd.take_committed_entries(), apply)?;
            for e in rd.entries() {
                records.push((TAG_ENTRY, codec::encode_entry(id, e)));
            }
            if let Some(hs) = rd.hs() {
                records.push((TAG_HARD_STATE, codec::encode_hard_state(id, hs)));
            }
            readies.push((id, rd));
        }
        if readies.is_empty() {
            return Ok(stats);
        }
        // One WAL write for the whole round; a round bigger than `max_round_bytes` is
        // written in a few appends (each one write, synced) so none exceeds the engine's
        // batch limit. Entries are tagged with the first append's segment: the floor then
        // keeps at least everything they need.
        let mut segment = u64::MAX;
        let wo = WriteOptions {
            durability: Some(self.cfg.durability),
        };
        let mut start = 0;
        while start < records.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < records.len()
                && (end == start || bytes + records[end].1.len() <= self.cfg.max_round_bytes)
            {
                bytes += records[end].1.len();
                end += 1;
            }
            let refs: Vec<(u8, &[u8])> = records[start..end]
                .iter()
                .map(|(t, p)| (*t, p.as_slice()))
                .collect();
            let pos = self
                .db
                .append_opaque(&refs, &wo)
                .map_err(|e| Error::engine("append raft records", e))?;
            segment = segment.min(pos.segment);
            start = end;
        }
        stats.records = records.len();
        for (id, mut rd) in readies {
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            let store = peer.node.mut_store();
            store.append(rd.entries(), segment)?;
            if let Some(hs) = rd.hs() {
                store.set_hard_state(hs.clone());
            }
            // Only now, after the WAL write (and its fdatasync), may these leave.
            for m in rd.take_persisted_messages() {
                apply.send(id, m);
            }
            let mut light = peer.node.advance(rd);
            if let Some(commit) = light.commit_index() {
                peer.node.mut_store().set_commit(commit);
            }
            for m in light.take_messages() {
                apply.send(id, m);
            }
            stats.applied += apply_entries(&self.db, peer, light.take_committed_entries(), apply)?;
            peer.node.advance_apply();
            let (entries, bytes) = peer.node.store().cached();
            if entries > self.cfg.max_cached_entries || bytes > self.cfg.max_cached_bytes {
                let keep = (self.cfg.max_cached_entries / 2) as u64;
                let to = peer
                    .applied
                    .min(peer.node.store().last_index().saturating_sub(keep));
                peer.node.mut_store().compact_cache(to);
            }
        }
        Ok(stats)
    }

    /// Truncates the logs of regions whose applied data a flush made durable: writes a
    /// checkpoint of every region in one WAL append, then releases WAL segments below
    /// the oldest entry any region still needs. Returns whether the floor moved.
    pub fn compact_log(&mut self) -> Result<bool> {
        let mut targets = Vec::new();
        let mut advanced = false;
        for (&id, peer) in &self.peers {
            let store = peer.node.store();
            let durable = self.db.applied_index(id).unwrap_or(0).min(peer.applied);
            let at = durable.max(store.checkpoint_index());
            advanced |= at > store.checkpoint_index();
            let Some(c) = store.checkpoint_at(at) else {
                // The term is unknown (cannot happen for an index between the checkpoint
                // and the last entry); keep the old checkpoint.
                return Ok(false);
            };
            targets.push((id, c));
        }
        if !advanced {
            return Ok(false);
        }
        let records: Vec<(u8, Vec<u8>)> = targets
            .iter()
            .map(|(id, c)| (TAG_CHECKPOINT, codec::encode_checkpoint(*id, c)))
            .collect();
        let refs: Vec<(u8, &[u8])> = records.iter().map(|(t, p)| (*t, p.as_slice())).collect();
        let wo = WriteOptions {
            durability: Some(Durability::Sync),
        };
        let pos = self
            .db
            .append_opaque(&refs, &wo)
            .map_err(|e| Error::engine("append raft checkpoints", e))?;
        let mut floor = pos.segment;
        for (id, c) in &targets {
            let Some(peer) = self.peers.get_mut(id) else {
                continue;
            };
            let store = peer.node.mut_store();
            store.checkpointed(c.truncated_index, c.truncated_term);
            match store.segment_of(c.truncated_index + 1) {
                None => {}
                Some(Some(s)) => floor = floor.min(s),
                // Replayed entries of unknown segments are still needed: keep the floor.
                Some(None) => return Ok(false),
            }
        }
        self.db
            .set_opaque_floor(Some(floor))
            .map_err(|e| Error::engine("release raft log segments", e))?;
        Ok(true)
    }
}

/// Applies committed entries of one peer; returns how many carried data.
fn apply_entries<T>(
    db: &Db,
    peer: &mut Peer<T>,
    entries: Vec<Entry>,
    apply: &mut dyn Apply<T>,
) -> Result<usize> {
    let region = peer.region.id;
    let mut last = None;
    let mut n = 0;
    for e in entries {
        last = Some(e.index);
        let mut token = None;
        // Proposals at lower indexes were overwritten; bounded by the pending queue.
        while let Some(front) = peer.pending.front() {
            if front.index > e.index {
                break;
            }
            let Some(p) = peer.pending.pop_front() else {
                break;
            };
            if p.index == e.index && p.term == e.term {
                token = Some(p.token);
                break;
            }
            apply.abandon(
                p.token,
                Error::ProposalDropped {
                    region,
                    index: p.index,
                },
            );
        }
        match e.entry_type {
            EntryType::EntryNormal if !e.data.is_empty() => {
                apply.apply(&peer.region, e.index, &e.data, token);
                n += 1;
            }
            _ => {
                // Leader no-ops (and conf changes, which nothing proposes yet).
                if let Some(t) = token {
                    apply.abandon(
                        t,
                        Error::ProposalDropped {
                            region,
                            index: e.index,
                        },
                    );
                }
            }
        }
    }
    if let Some(index) = last {
        db.apply_unlogged(&WriteBatch::new(), Some((region, index)))
            .map_err(|e| Error::engine(format!("record applied index of region {region}"), e))?;
        peer.applied = index;
    }
    Ok(n)
}

//! The scheduler: which membership change or leader transfer a region's leader should run
//! next. Pure decisions (no IO, no clock of its own): the service hands it the catalog, the
//! stores' liveness and figures and the time, and delivers what it returns in the answer to
//! the region's heartbeat.
//!
//! Rules, for the region whose leader just reported (see docs/coordinator.md, "Scheduler"):
//!
//! - **Replica repair.** A store is down once it missed heartbeats for longer than
//!   `store_down_after_ms` (a store only briefly silent triggers nothing). A region with
//!   fewer voters on up stores than the target replica count gets, in order: a learner on a
//!   new (store, core) chosen by placement (never a store that already holds the region),
//!   the learner's promotion once a heartbeat shows it, and then the removal of the
//!   replica on the down store (a down learner too). Nothing is removed while the region
//!   has fewer healthy voters than the target: with no spare up store the down replica
//!   stays, and the region keeps its quorum size.
//! - **Decommission.** A region with a replica on a store marked `decommissioning` gets
//!   the same steps as a repair: a learner on a new (store, core), its promotion, then the
//!   removal of the drained replica; a drained leader hands its leadership to another voter
//!   (the least-leading store) right before its removal, and a learner on the store is
//!   removed at once. Never below the target voter count: without a spare store nothing
//!   moves.
//! - **Replica balance.** With `mean` the replicas per up, non-decommissioning store, a
//!   store holding more than `ceil(mean) + 1` moves a replica of the reporting region (when
//!   the region has one there) to the up store holding the fewest that does not hold the
//!   region, if that store would still hold fewer than the source: learner, promotion, then
//!   removal (leadership transferred first if the source leads). Nothing is moved while a
//!   store that the catalog shows with replicas is down, or while a repair runs.
//! - **Size balance.** Once replica counts are balanced, with every region's size known
//!   (`approximate_size_bytes` of its heartbeats) and `mean` the bytes per up,
//!   non-decommissioning store (each replica counts its region's size), a store holding
//!   more than 1.25 x `mean` and at least `balance_min_bytes` above it moves the reporting
//!   region's replica to the eligible store holding the fewest bytes, only if that store
//!   would still hold no more than the source after the move, and would not go over the
//!   replica-balance bound. Same steps and limits as replica balance.
//! - **Moves half done.** Whatever started them (this coordinator, a former leader, an
//!   operator's `NOKV.REGION` command), a learner on an up store is promoted, and a region
//!   with more voters than the target loses the one on a decommissioning store, else on the
//!   store holding the most replicas (one over the replica-balance bound first, then the one
//!   holding the most bytes). So a move continues after a coordinator failover.
//! - **Leader balance.** With `mean` the leaders per up store (decommissioning ones
//!   aside), a store leading more than `ceil(mean) + 1` regions hands the reporting region's leadership to its voter on the
//!   store leading the fewest (ties: the least-leading core as the stores report it, then
//!   the lowest store id), only if that store would still lead fewer than the source.
//!   Transfers in flight count as done.
//! - **Leader balance by load.** With leader counts within that bound and `mean` the
//!   requests per second the up stores' leaders served (each region's load as its leader
//!   last reported it), a store leading more than 1.25 x `mean` and at least
//!   `balance_min_qps` above it hands the reporting region's leadership to its voter on
//!   the store leading the least load, only when the region's load is below the gap
//!   between the two (the pair ends closer than it started, so the region never moves
//!   back) and that store would stay within the count bound. Same limit (`max_leader_moves`) and cooldown as leader balance.
//! - **Rate limits.** One operator in flight per region (re-sent with every heartbeat
//!   until a heartbeat shows it done), at most `max_repair` repair and decommission steps,
//!   `max_balance` replica-balance steps and `max_leader_moves` leader-balance transfers in
//!   flight cluster-wide, an operator expires after `timeout_ms`, and a region waits
//!   `cooldown_ms` after a leader-balance transfer, a finished replica-balance move or an
//!   expired operator (the steps of one repair or move follow each other at once).

use crate::placement::{self, StoreCandidate};
use crate::proto::{Operator, OperatorKind, Peer, PendingPeer, Region};
use crate::state::RegionEntry;
use std::collections::HashMap;

/// The scheduler's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Whether operators are issued at all (`--schedule on|off`).
    pub enabled: bool,
    /// A store without a heartbeat for longer than this is down.
    pub store_down_after_ms: u64,
    /// Voters a region should have (0: as bootstrapped; else the most common voter count
    /// of the catalog).
    pub replicas: usize,
    /// Repair steps in flight at once, cluster-wide.
    pub max_repair: usize,
    /// Leader transfers in flight at once, cluster-wide.
    pub max_leader_moves: usize,
    /// Replica-balance steps (moves between up stores) in flight at once, cluster-wide.
    pub max_balance: usize,
    /// Size balance moves nothing from a store less than this many bytes above the mean.
    pub balance_min_bytes: u64,
    /// Load balance moves no leader from a store leading less than this many requests
    /// per second above the mean.
    pub balance_min_qps: u64,
    /// Pause of a region after a transfer or an expired operator.
    pub cooldown_ms: u64,
    /// An operator not shown done by the heartbeats after this long is dropped.
    pub timeout_ms: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            enabled: true,
            store_down_after_ms: 30_000,
            replicas: 0,
            max_repair: 4,
            max_leader_moves: 4,
            max_balance: 2,
            balance_min_bytes: 64 << 20,
            balance_min_qps: 100,
            cooldown_ms: 10_000,
            timeout_ms: 60_000,
        }
    }
}

/// One store as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreView {
    /// Store id.
    pub store_id: u64,
    /// Milliseconds since its last heartbeat.
    pub since_heartbeat_ms: u64,
    /// Leaders per core as the store last reported them (empty: not reported).
    pub core_leaders: Vec<u64>,
    /// Marked `decommissioning`: its replicas move away.
    pub decommissioning: bool,
}

/// The cluster as the scheduler sees it when a region's leader reports.
#[derive(Debug, Clone, Copy)]
pub struct ClusterView<'a> {
    /// Replicas per region recorded at the bootstrap (0: not recorded).
    pub replicas: usize,
    /// Every region of the catalog with its leader.
    pub regions: &'a [RegionEntry],
    /// Every registered store.
    pub stores: &'a [StoreView],
    /// Placement's view of the stores (for a new replica).
    pub candidates: &'a [StoreCandidate],
    /// Replicas placed but not yet shown by a heartbeat.
    pub pending: &'a [PendingPeer],
    /// Region sizes as their leaders last reported them: (approximate bytes, keys).
    pub sizes: &'a HashMap<u64, (u64, u64)>,
    /// Requests per second each region's leader last reported (absent: not known, 0).
    pub loads: &'a HashMap<u64, u64>,
}

/// What a heartbeat's answer carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do.
    Nothing,
    /// The region's operator in flight, sent again (the last delivery may have failed).
    Resend(Operator),
    /// A new operator: the caller allocates the peer id of an `AddLearner` whose peer has
    /// id 0 (and records the placement), then calls [`Scheduler::start`].
    Propose(Operator),
}

/// An operator in flight.
#[derive(Debug, Clone)]
struct InFlight {
    op: Operator,
    started_ms: u64,
}

/// The scheduler's state: operators in flight, cooldowns, counters. Volatile (a new
/// coordinator leader starts afresh).
#[derive(Debug, Clone)]
pub struct Scheduler {
    opts: Options,
    in_flight: HashMap<u64, InFlight>,
    cooldown_until: HashMap<u64, u64>,
    next_id: u64,
    issued: u64,
    completed: u64,
    expired: u64,
}

const REPAIR: &str = "repair";
const DECOMMISSION: &str = "decommission";
const BALANCE_REGION: &str = "balance-region";
const BALANCE_SIZE: &str = "balance-size";
const BALANCE: &str = "balance-leader";
const BALANCE_LOAD: &str = "balance-leader-load";

/// Which rate limit an operator counts under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Repair and decommission steps (`max_repair`).
    Repair,
    /// Replica-balance steps (`max_balance`).
    Region,
    /// Leader-balance transfers (`max_leader_moves`).
    Leader,
}

fn class(op: &Operator) -> Class {
    match op.reason.as_str() {
        REPAIR | DECOMMISSION => Class::Repair,
        BALANCE_REGION | BALANCE_SIZE => Class::Region,
        _ => Class::Leader,
    }
}

impl Scheduler {
    /// A scheduler with no operators.
    pub fn new(opts: Options) -> Scheduler {
        Scheduler {
            opts,
            in_flight: HashMap::new(),
            cooldown_until: HashMap::new(),
            next_id: 1,
            issued: 0,
            completed: 0,
            expired: 0,
        }
    }

    /// The settings.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// Turns issuing operators on or off (operators in flight are kept and resent).
    pub fn set_enabled(&mut self, enabled: bool) {
        self.opts.enabled = enabled;
    }

    /// Whether `region` has an operator in flight.
    pub fn has_in_flight(&self, region: u64) -> bool {
        self.in_flight.contains_key(&region)
    }

    /// Operators in flight (ages as of `now_ms`), by region id.
    pub fn in_flight(&self, now_ms: u64) -> Vec<Operator> {
        let mut out: Vec<Operator> = self
            .in_flight
            .values()
            .map(|f| Operator {
                age_ms: now_ms.saturating_sub(f.started_ms),
                ..f.op.clone()
            })
            .collect();
        out.sort_by_key(|o| o.region_id);
        out
    }

    /// (issued, completed, expired) since this scheduler started.
    pub fn counters(&self) -> (u64, u64, u64) {
        (self.issued, self.completed, self.expired)
    }

    /// Records `op` (from a [`Step::Propose`], its peer id filled in) as in flight and
    /// returns it with its id.
    pub fn start(&mut self, mut op: Operator, now_ms: u64) -> Operator {
        op.id = self.next_id;
        self.next_id += 1;
        self.issued += 1;
        self.in_flight.insert(
            op.region_id,
            InFlight {
                op: op.clone(),
                started_ms: now_ms,
            },
        );
        op
    }

    /// A region's leader reported `region` led by `leader_peer_id`: completes or expires
    /// operators, then returns what the leader should do.
    pub fn on_heartbeat(
        &mut self,
        now_ms: u64,
        region: &Region,
        leader_peer_id: u64,
        view: &ClusterView<'_>,
    ) -> Step {
        self.expire(now_ms);
        self.abandon_toward_down(region.id, view);
        if let Some(f) = self.in_flight.get(&region.id) {
            if done(&f.op, region, leader_peer_id) {
                let op = f.op.clone();
                self.in_flight.remove(&region.id);
                self.completed += 1;
                let finished_move =
                    class(&op) == Class::Region && op.kind() == OperatorKind::RemovePeer;
                if class(&op) == Class::Leader || finished_move {
                    self.cooldown_until
                        .insert(region.id, now_ms + self.opts.cooldown_ms);
                }
            } else {
                return Step::Resend(f.op.clone());
            }
        }
        if !self.opts.enabled {
            return Step::Nothing;
        }
        if self
            .cooldown_until
            .get(&region.id)
            .is_some_and(|until| now_ms < *until)
        {
            return Step::Nothing;
        }
        self.cooldown_until.remove(&region.id);
        match self.decide(region, leader_peer_id, view) {
            Some(op) => Step::Propose(op),
            None => Step::Nothing,
        }
    }

    /// Drops operators older than the timeout; their regions cool down.
    fn expire(&mut self, now_ms: u64) {
        let timeout = self.opts.timeout_ms;
        let old: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| now_ms.saturating_sub(f.started_ms) >= timeout)
            .map(|(r, _)| *r)
            .collect();
        for region in old {
            if let Some(f) = self.in_flight.remove(&region) {
                tracing::info!(region, op = f.op.id, kind = ?f.op.kind(), "scheduler operator expired");
            }
            self.expired += 1;
            self.cooldown_until
                .insert(region, now_ms + self.opts.cooldown_ms);
        }
    }

    /// Drops `region`'s operator when it moves something *to* a store that went down (a
    /// leader transfer or a new replica there cannot finish; waiting for the timeout would
    /// hold the region's repair back). Counted as expired; no cooldown.
    fn abandon_toward_down(&mut self, region: u64, view: &ClusterView<'_>) {
        let Some(f) = self.in_flight.get(&region) else {
            return;
        };
        let toward = match f.op.kind() {
            OperatorKind::RemovePeer | OperatorKind::Unknown => None,
            _ => f.op.peer.as_ref().map(|p| p.store_id),
        };
        if toward.is_some_and(|store| !self.up(view, store)) {
            if let Some(f) = self.in_flight.remove(&region) {
                tracing::info!(region, op = f.op.id, kind = ?f.op.kind(), "scheduler operator abandoned: its store is down");
            }
            self.expired += 1;
        }
    }

    fn up(&self, view: &ClusterView<'_>, store: u64) -> bool {
        view.stores
            .iter()
            .find(|s| s.store_id == store)
            .is_some_and(|s| s.since_heartbeat_ms <= self.opts.store_down_after_ms)
    }

    /// The voter count regions should have.
    fn target(&self, view: &ClusterView<'_>) -> usize {
        if self.opts.replicas > 0 {
            return self.opts.replicas;
        }
        if view.replicas > 0 {
            return view.replicas;
        }
        let mut counts: HashMap<usize, usize> = HashMap::new();
        for e in view.regions {
            *counts
                .entry(e.region.peers.iter().filter(|p| !p.learner).count())
                .or_default() += 1;
        }
        counts
            .into_iter()
            .max_by_key(|(voters, n)| (*n, *voters))
            .map_or(0, |(voters, _)| voters)
    }

    fn decide(
        &self,
        region: &Region,
        leader_peer_id: u64,
        view: &ClusterView<'_>,
    ) -> Option<Operator> {
        let leader = region.peer(leader_peer_id)?;
        if !self.up(view, leader.store_id) {
            return None;
        }
        let repair = self.repair(region, view);
        if repair.needed {
            if self.count(Class::Repair) >= self.opts.max_repair {
                return None;
            }
            return repair.op;
        }
        if let Some(op) = self.move_step(region, leader, view) {
            return self.within_limit(op);
        }
        if self.count(Class::Leader) >= self.opts.max_leader_moves {
            return None;
        }
        self.balance_leader(region, leader, view)
    }

    /// Operators of class `c` in flight.
    fn count(&self, c: Class) -> usize {
        self.in_flight
            .values()
            .filter(|f| class(&f.op) == c)
            .count()
    }

    /// `op`, unless its class has as many in flight as it may.
    fn within_limit(&self, op: Operator) -> Option<Operator> {
        let c = class(&op);
        let max = match c {
            Class::Repair => self.opts.max_repair,
            Class::Region => self.opts.max_balance,
            Class::Leader => self.opts.max_leader_moves,
        };
        (self.count(c) < max).then_some(op)
    }

    fn decommissioning(&self, view: &ClusterView<'_>, store: u64) -> bool {
        view.stores
            .iter()
            .any(|s| s.store_id == store && s.decommissioning)
    }

    /// The next step of a move (decommission, replica balance, or one half done), for a
    /// region without a down replica.
    fn move_step(
        &self,
        region: &Region,
        leader: &Peer,
        view: &ClusterView<'_>,
    ) -> Option<Operator> {
        let target = self.target(view);
        let drained = |p: &Peer| self.decommissioning(view, p.store_id);
        let reason = if region.peers.iter().any(drained) {
            DECOMMISSION
        } else {
            BALANCE_REGION
        };
        let op = |kind: OperatorKind, peer: Peer, from_store: u64, reason: &str| Operator {
            id: 0,
            region_id: region.id,
            kind: kind as i32,
            peer: Some(peer),
            reason: reason.into(),
            from_store,
            age_ms: 0,
        };
        // A learner: removed from a drained store, else promoted.
        if let Some(l) = region.peers.iter().find(|p| p.learner) {
            if drained(l) {
                return Some(op(
                    OperatorKind::RemovePeer,
                    l.clone(),
                    l.store_id,
                    DECOMMISSION,
                ));
            }
            return Some(op(OperatorKind::Promote, l.clone(), 0, reason));
        }
        let voters: Vec<&Peer> = region.peers.iter().collect();
        let counts = self.replica_counts(view);
        if voters.len() > target && target > 0 {
            // Remove the drained voter, else the one on a store over the replica bound,
            // else on the store holding the most bytes, then the most replicas.
            let limit = self.count_limit(view);
            let bytes = store_bytes(view).unwrap_or_default();
            let victim = voters.iter().copied().max_by_key(|p| {
                let count = counts.get(&p.store_id).copied().unwrap_or(0);
                let held = bytes.get(&p.store_id).copied().unwrap_or(0);
                let over = limit.is_some_and(|l| count > l);
                (drained(p), over, held, count, p.id != leader.id, p.store_id)
            })?;
            if victim.id == leader.id {
                let to = self.transfer_target(region, victim, view)?;
                return Some(op(
                    OperatorKind::TransferLeader,
                    to.clone(),
                    victim.store_id,
                    reason,
                ));
            }
            return Some(op(
                OperatorKind::RemovePeer,
                victim.clone(),
                victim.store_id,
                reason,
            ));
        }
        if let Some(d) = voters.iter().find(|p| drained(p)) {
            let at = self.place_new(region, view)?;
            return Some(op(OperatorKind::AddLearner, at, d.store_id, DECOMMISSION));
        }
        if let Some((at, from)) = self.balance_region(region, view, &counts) {
            return Some(op(OperatorKind::AddLearner, at, from, BALANCE_REGION));
        }
        self.balance_size(region, view, &counts)
            .map(|(at, from)| op(OperatorKind::AddLearner, at, from, BALANCE_SIZE))
    }

    /// Replicas per store as placement counts them (catalog and pending placements).
    fn replica_counts(&self, view: &ClusterView<'_>) -> HashMap<u64, u64> {
        view.candidates
            .iter()
            .map(|c| (c.store_id, c.replicas))
            .collect()
    }

    /// The voter (other than `leaving`, on an up store that is not drained) to hand the
    /// leadership to: the store leading the fewest regions, then the lowest id.
    fn transfer_target<'r>(
        &self,
        region: &'r Region,
        leaving: &Peer,
        view: &ClusterView<'_>,
    ) -> Option<&'r Peer> {
        let leads = |store: u64| {
            view.regions
                .iter()
                .filter(|e| {
                    e.region
                        .peer(e.leader_peer_id)
                        .is_some_and(|l| l.store_id == store)
                })
                .count()
        };
        region
            .peers
            .iter()
            .filter(|p| p.id != leaving.id && !p.learner)
            .filter(|p| self.up(view, p.store_id) && !self.decommissioning(view, p.store_id))
            .min_by_key(|p| (leads(p.store_id), p.store_id))
    }

    /// A new learner for `region`: a pending placement on an up store again, else a new
    /// (store, core) from placement (peer id 0: the caller allocates it).
    fn place_new(&self, region: &Region, view: &ClusterView<'_>) -> Option<Peer> {
        let pending = view.pending.iter().filter(|p| p.region_id == region.id);
        if let Some(p) = pending
            .clone()
            .filter_map(|p| p.peer.as_ref())
            .find(|p| {
                self.up(view, p.store_id)
                    && !self.decommissioning(view, p.store_id)
                    && region.peer(p.id).is_none()
            })
            .filter(|p| region.peers.iter().all(|q| q.store_id != p.store_id))
        {
            return Some(Peer {
                learner: true,
                ..p.clone()
            });
        }
        let mut exclude: Vec<u64> = region.peers.iter().map(|p| p.store_id).collect();
        exclude.extend(pending.filter_map(|p| p.peer.as_ref().map(|q| q.store_id)));
        let placed = placement::place(view.candidates, &exclude, 1).unwrap_or_default();
        let at = placed.first()?;
        Some(Peer {
            id: 0,
            store_id: at.store_id,
            core: Some(at.core),
            learner: true,
        })
    }

    /// The stores balance may move replicas to: up, serving, not decommissioning; `None`
    /// while a store holding replicas is down or a repair runs (then nothing moves).
    fn balance_stores<'v>(&self, view: &ClusterView<'v>) -> Option<Vec<&'v StoreCandidate>> {
        let down_with_replicas = view
            .regions
            .iter()
            .flat_map(|e| e.region.peers.iter())
            .any(|p| !self.up(view, p.store_id));
        if down_with_replicas || self.count(Class::Repair) > 0 {
            return None;
        }
        let eligible: Vec<&StoreCandidate> = view
            .candidates
            .iter()
            .filter(|c| c.up && !c.cores.is_empty() && self.up(view, c.store_id))
            .filter(|c| !self.decommissioning(view, c.store_id))
            .collect();
        (!eligible.is_empty()).then_some(eligible)
    }

    /// The replica-balance bound: `ceil(mean) + 1` replicas per eligible store.
    fn count_limit(&self, view: &ClusterView<'_>) -> Option<u64> {
        let eligible = self.balance_stores(view)?;
        let total: u64 = eligible.iter().map(|c| c.replicas).sum();
        Some(total.div_ceil(eligible.len() as u64) + 1)
    }

    /// Replica balance: where a replica of `region` on an overloaded store goes, and from
    /// which store.
    fn balance_region(
        &self,
        region: &Region,
        view: &ClusterView<'_>,
        counts: &HashMap<u64, u64>,
    ) -> Option<(Peer, u64)> {
        let limit = self.count_limit(view)?;
        let (src_count, src) = region
            .peers
            .iter()
            .filter_map(|p| Some((*counts.get(&p.store_id)?, p.store_id)))
            .max()?;
        if src_count <= limit {
            return None;
        }
        let dst = self.place_new(region, view)?;
        let dst_count = counts.get(&dst.store_id).copied().unwrap_or(0);
        // A pending placement reused counts already; a new one adds one.
        let after = if dst.id == 0 {
            dst_count + 1
        } else {
            dst_count
        };
        if after >= src_count {
            return None;
        }
        Some((dst, src))
    }

    /// Size balance: where `region`'s replica on a store holding well over the mean of
    /// bytes goes, and from which store (module doc).
    fn balance_size(
        &self,
        region: &Region,
        view: &ClusterView<'_>,
        counts: &HashMap<u64, u64>,
    ) -> Option<(Peer, u64)> {
        let eligible = self.balance_stores(view)?;
        let limit = self.count_limit(view)?;
        let size = view.sizes.get(&region.id).map(|s| s.0).filter(|s| *s > 0)?;
        let bytes = store_bytes(view)?;
        let held = |store: u64| bytes.get(&store).copied().unwrap_or(0);
        let total: u64 = eligible.iter().map(|c| held(c.store_id)).sum();
        let mean = total / eligible.len() as u64;
        let src = region
            .peers
            .iter()
            .filter(|p| eligible.iter().any(|c| c.store_id == p.store_id))
            .map(|p| p.store_id)
            .max_by_key(|s| (held(*s), *s))?;
        let src_bytes = held(src);
        let over = src_bytes.saturating_sub(mean);
        if src_bytes.saturating_mul(4) <= mean.saturating_mul(5)
            || over < self.opts.balance_min_bytes
        {
            return None;
        }
        let mut exclude: Vec<u64> = region.peers.iter().map(|p| p.store_id).collect();
        exclude.extend(
            view.pending
                .iter()
                .filter(|p| p.region_id == region.id)
                .filter_map(|p| p.peer.as_ref().map(|q| q.store_id)),
        );
        let at = placement::place_by(view.candidates, &exclude, 1, |c| {
            (held(c.store_id), c.replicas, c.load, c.store_id)
        })
        .ok()?
        .into_iter()
        .next()?;
        if self.decommissioning(view, at.store_id) {
            return None;
        }
        // No overshoot: after the move the target holds no more than the source.
        if held(at.store_id).saturating_add(size.saturating_mul(2)) > src_bytes {
            return None;
        }
        if counts.get(&at.store_id).copied().unwrap_or(0) + 1 > limit {
            return None;
        }
        Some((
            Peer {
                id: 0,
                store_id: at.store_id,
                core: Some(at.core),
                learner: true,
            },
            src,
        ))
    }

    fn repair(&self, region: &Region, view: &ClusterView<'_>) -> Repair {
        let target = self.target(view);
        let healthy_voters = region
            .peers
            .iter()
            .filter(|p| !p.learner && self.up(view, p.store_id))
            .count();
        let down: Vec<&Peer> = region
            .peers
            .iter()
            .filter(|p| !self.up(view, p.store_id))
            .collect();
        let from_store = down.first().map_or(0, |p| p.store_id);
        let op = |kind: OperatorKind, peer: Peer| Operator {
            id: 0,
            region_id: region.id,
            kind: kind as i32,
            peer: Some(peer),
            reason: REPAIR.into(),
            from_store,
            age_ms: 0,
        };
        if healthy_voters < target {
            if let Some(l) = region.peers.iter().find(|p| {
                p.learner && self.up(view, p.store_id) && !self.decommissioning(view, p.store_id)
            }) {
                return Repair::with(op(OperatorKind::Promote, l.clone()));
            }
            // A placement not yet shown in a heartbeat again, else a new one. No spare up
            // store: nothing to do (the down replica is not removed).
            return match self.place_new(region, view) {
                Some(at) => Repair::with(op(OperatorKind::AddLearner, at)),
                None => Repair {
                    needed: true,
                    op: None,
                },
            };
        }
        match down.first() {
            Some(p) => Repair::with(op(OperatorKind::RemovePeer, (*p).clone())),
            None => Repair {
                needed: false,
                op: None,
            },
        }
    }

    fn balance_leader(
        &self,
        region: &Region,
        leader: &Peer,
        view: &ClusterView<'_>,
    ) -> Option<Operator> {
        let voters: Vec<&Peer> = region.peers.iter().filter(|p| !p.learner).collect();
        if voters.iter().any(|p| !self.up(view, p.store_id)) {
            return None;
        }
        let mut counts: HashMap<u64, u64> = view
            .stores
            .iter()
            .filter(|s| self.up(view, s.store_id) && !s.decommissioning)
            .map(|s| (s.store_id, 0))
            .collect();
        for e in view.regions {
            if let Some(l) = e.region.peer(e.leader_peer_id) {
                if let Some(c) = counts.get_mut(&l.store_id) {
                    *c += 1;
                }
            }
        }
        // Transfers in flight count as done.
        for f in self
            .in_flight
            .values()
            .filter(|f| f.op.kind() == OperatorKind::TransferLeader)
        {
            if let Some(c) = counts.get_mut(&f.op.from_store) {
                *c = c.saturating_sub(1);
            }
            if let Some(c) = f.op.peer.as_ref().and_then(|p| counts.get_mut(&p.store_id)) {
                *c += 1;
            }
        }
        if counts.is_empty() {
            return None;
        }
        let total: u64 = counts.values().sum();
        let n = counts.len() as u64;
        let limit = total.div_ceil(n) + 1;
        let src = *counts.get(&leader.store_id)?;
        if src <= limit {
            return self.balance_leader_load(region, leader, &voters, &counts, limit, view);
        }
        let core_leaders = |p: &Peer| -> u64 {
            view.stores
                .iter()
                .find(|s| s.store_id == p.store_id)
                .and_then(|s| s.core_leaders.get(p.core? as usize).copied())
                .unwrap_or(0)
        };
        let to = voters
            .iter()
            .filter(|p| p.id != leader.id)
            .filter_map(|p| Some((*counts.get(&p.store_id)?, core_leaders(p), p.store_id, *p)))
            .min_by_key(|(count, core, store, _)| (*count, *core, *store))?;
        if to.0 + 1 >= src {
            return None;
        }
        Some(Operator {
            id: 0,
            region_id: region.id,
            kind: OperatorKind::TransferLeader as i32,
            peer: Some(to.3.clone()),
            reason: BALANCE.into(),
            from_store: leader.store_id,
            age_ms: 0,
        })
    }
}

impl Scheduler {
    /// Leader balance by load (see the module docs), once leader counts (`counts`, with
    /// their bound `limit`) are balanced.
    fn balance_leader_load(
        &self,
        region: &Region,
        leader: &Peer,
        voters: &[&Peer],
        counts: &HashMap<u64, u64>,
        limit: u64,
        view: &ClusterView<'_>,
    ) -> Option<Operator> {
        let own = view.loads.get(&region.id).copied().unwrap_or(0);
        if own == 0 {
            return None;
        }
        // Requests per second led per up store (the keys of `counts`).
        let mut loads: HashMap<u64, u64> = counts.keys().map(|&s| (s, 0)).collect();
        for e in view.regions {
            if let Some(l) = e.region.peer(e.leader_peer_id) {
                if let Some(v) = loads.get_mut(&l.store_id) {
                    *v += view.loads.get(&e.region.id).copied().unwrap_or(0);
                }
            }
        }
        // Transfers in flight count as done.
        for f in self
            .in_flight
            .values()
            .filter(|f| f.op.kind() == OperatorKind::TransferLeader)
        {
            let moved = view.loads.get(&f.op.region_id).copied().unwrap_or(0);
            if let Some(v) = loads.get_mut(&f.op.from_store) {
                *v = v.saturating_sub(moved);
            }
            if let Some(v) = f.op.peer.as_ref().and_then(|p| loads.get_mut(&p.store_id)) {
                *v += moved;
            }
        }
        let total: u64 = loads.values().sum();
        let mean = total / loads.len() as u64;
        let src = *loads.get(&leader.store_id)?;
        if src * 4 <= mean * 5 || src < mean + self.opts.balance_min_qps {
            return None;
        }
        let (dst, to) = voters
            .iter()
            .filter(|p| p.id != leader.id)
            .filter_map(|p| Some((*loads.get(&p.store_id)?, *p)))
            .min_by_key(|(load, p)| (*load, p.store_id))?;
        // The pair ends closer than it started (so the region never comes back), and the
        // count bound holds.
        if own >= src.saturating_sub(dst) || counts.get(&to.store_id)? + 1 > limit {
            return None;
        }
        Some(Operator {
            id: 0,
            region_id: region.id,
            kind: OperatorKind::TransferLeader as i32,
            peer: Some(to.clone()),
            reason: BALANCE_LOAD.into(),
            from_store: leader.store_id,
            age_ms: 0,
        })
    }
}

/// Bytes per store: each replica (placements pending included) counts its region's
/// reported size. `None` while a region's size is not known yet (a new coordinator leader
/// waits for every region's heartbeat).
fn store_bytes(view: &ClusterView<'_>) -> Option<HashMap<u64, u64>> {
    let mut out: HashMap<u64, u64> = HashMap::new();
    for e in view.regions {
        let size = view.sizes.get(&e.region.id)?.0;
        for p in &e.region.peers {
            *out.entry(p.store_id).or_default() += size;
        }
    }
    for p in view.pending {
        let size = view.sizes.get(&p.region_id).map_or(0, |s| s.0);
        if let Some(q) = &p.peer {
            *out.entry(q.store_id).or_default() += size;
        }
    }
    Some(out)
}

/// The repair a region needs: `needed` even when no step is possible now.
struct Repair {
    needed: bool,
    op: Option<Operator>,
}

impl Repair {
    fn with(op: Operator) -> Repair {
        Repair {
            needed: true,
            op: Some(op),
        }
    }
}

/// Whether `region` (as its leader reports it) shows `op` done.
fn done(op: &Operator, region: &Region, leader_peer_id: u64) -> bool {
    let Some(peer) = &op.peer else {
        return true;
    };
    let now = region.peer(peer.id);
    match op.kind() {
        OperatorKind::AddLearner => now.is_some(),
        OperatorKind::Promote => now.is_some_and(|p| !p.learner),
        OperatorKind::RemovePeer => now.is_none(),
        OperatorKind::TransferLeader => leader_peer_id == peer.id,
        OperatorKind::Unknown => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOWN_AFTER: u64 = 3_000;

    fn opts() -> Options {
        Options {
            store_down_after_ms: DOWN_AFTER,
            ..Options::default()
        }
    }

    fn peer(id: u64, store: u64) -> Peer {
        Peer {
            id,
            store_id: store,
            core: Some(0),
            learner: false,
        }
    }

    /// Region `id` with voters on `stores` (peer ids `id * 10 + store`), led by the first.
    fn entry(id: u64, stores: &[u64]) -> RegionEntry {
        let peers: Vec<Peer> = stores.iter().map(|s| peer(id * 10 + s, *s)).collect();
        RegionEntry {
            leader_peer_id: peers[0].id,
            region: Region {
                id,
                start_key: vec![id as u8],
                end_key: vec![id as u8 + 1],
                epoch_version: 1,
                epoch_conf_version: 1,
                peers,
            },
        }
    }

    /// Stores 1..=n, those in `down` silent for longer than the down time.
    fn stores(n: u64, down: &[u64]) -> Vec<StoreView> {
        (1..=n)
            .map(|id| StoreView {
                store_id: id,
                since_heartbeat_ms: if down.contains(&id) {
                    DOWN_AFTER + 1
                } else {
                    100
                },
                core_leaders: Vec::new(),
                decommissioning: false,
            })
            .collect()
    }

    fn candidates(stores: &[StoreView], regions: &[RegionEntry]) -> Vec<StoreCandidate> {
        stores
            .iter()
            .map(|s| StoreCandidate {
                store_id: s.store_id,
                up: s.since_heartbeat_ms <= DOWN_AFTER && !s.decommissioning,
                replicas: regions
                    .iter()
                    .flat_map(|e| e.region.peers.iter())
                    .filter(|p| p.store_id == s.store_id)
                    .count() as u64,
                load: 0,
                cores: vec![(0, 0), (0, 0)],
                host: None,
            })
            .collect()
    }

    /// One heartbeat of region `i` of `regions` through `s` (bootstrapped with 3 replicas).
    fn beat(
        s: &mut Scheduler,
        now: u64,
        regions: &[RegionEntry],
        i: usize,
        st: &[StoreView],
    ) -> Step {
        beat_with(s, now, regions, i, st, 3)
    }

    fn beat_with(
        s: &mut Scheduler,
        now: u64,
        regions: &[RegionEntry],
        i: usize,
        st: &[StoreView],
        replicas: usize,
    ) -> Step {
        beat_sized(s, now, regions, i, st, replicas, &HashMap::new())
    }

    /// [`beat_with`] with the regions' reported sizes.
    fn beat_sized(
        s: &mut Scheduler,
        now: u64,
        regions: &[RegionEntry],
        i: usize,
        st: &[StoreView],
        replicas: usize,
        sizes: &HashMap<u64, (u64, u64)>,
    ) -> Step {
        beat_loaded(s, now, regions, i, st, replicas, sizes, &HashMap::new())
    }

    /// [`beat_sized`] with the regions' reported loads (requests per second).
    #[allow(clippy::too_many_arguments)]
    fn beat_loaded(
        s: &mut Scheduler,
        now: u64,
        regions: &[RegionEntry],
        i: usize,
        st: &[StoreView],
        replicas: usize,
        sizes: &HashMap<u64, (u64, u64)>,
        loads: &HashMap<u64, u64>,
    ) -> Step {
        let cands = candidates(st, regions);
        let view = ClusterView {
            replicas,
            regions,
            stores: st,
            candidates: &cands,
            pending: &[],
            sizes,
            loads,
        };
        let e = &regions[i];
        s.on_heartbeat(now, &e.region, e.leader_peer_id, &view)
    }

    fn proposed(step: Step) -> Operator {
        match step {
            Step::Propose(op) => op,
            other => panic!("expected an operator, got {other:?}"),
        }
    }

    #[test]
    fn a_down_voter_is_replaced_add_promote_remove() {
        let mut s = Scheduler::new(opts());
        let mut regions = vec![entry(1, &[1, 2, 3])];
        let st = stores(4, &[3]);
        let add = proposed(beat(&mut s, 0, &regions, 0, &st));
        assert_eq!(add.kind(), OperatorKind::AddLearner);
        let p = add.peer.clone().expect("peer");
        assert_eq!(
            (p.store_id, p.learner, p.id),
            (4, true, 0),
            "the spare store, id to allocate"
        );
        assert_eq!(add.from_store, 3);
        let add = s.start(
            Operator {
                peer: Some(Peer { id: 99, ..p }),
                ..add
            },
            0,
        );
        // Not shown yet: the same operator again.
        assert_eq!(
            beat(&mut s, 1000, &regions, 0, &st),
            Step::Resend(add.clone())
        );
        // The learner shows up: promote it.
        regions[0].region.peers.push(Peer {
            id: 99,
            store_id: 4,
            core: Some(1),
            learner: true,
        });
        let promote = proposed(beat(&mut s, 2000, &regions, 0, &st));
        assert_eq!(promote.kind(), OperatorKind::Promote);
        assert_eq!(promote.peer.as_ref().map(|p| p.id), Some(99));
        s.start(promote, 2000);
        regions[0].region.peers[3].learner = false;
        // Four voters, three healthy: the down one goes.
        let remove = proposed(beat(&mut s, 3000, &regions, 0, &st));
        assert_eq!(remove.kind(), OperatorKind::RemovePeer);
        assert_eq!(remove.peer.as_ref().map(|p| p.store_id), Some(3));
        s.start(remove, 3000);
        regions[0].region.peers.retain(|p| p.store_id != 3);
        assert_eq!(beat(&mut s, 4000, &regions, 0, &st), Step::Nothing);
        assert_eq!(s.counters(), (3, 3, 0));
        assert!(s.in_flight(4000).is_empty());
    }

    #[test]
    fn a_briefly_silent_store_triggers_nothing() {
        let mut s = Scheduler::new(opts());
        let regions = vec![entry(1, &[1, 2, 3])];
        let mut st = stores(4, &[]);
        st[2].since_heartbeat_ms = DOWN_AFTER; // at the bound: still up
        assert_eq!(beat(&mut s, 0, &regions, 0, &st), Step::Nothing);
    }

    #[test]
    fn without_a_spare_store_the_down_replica_stays() {
        let mut s = Scheduler::new(opts());
        let regions = vec![entry(1, &[1, 2, 3])];
        // Store 4 exists but is down too: no placement, and no removal.
        let st = stores(4, &[3, 4]);
        assert_eq!(beat(&mut s, 0, &regions, 0, &st), Step::Nothing);
        let st = stores(3, &[3]);
        assert_eq!(beat(&mut s, 0, &regions, 0, &st), Step::Nothing);
    }

    #[test]
    fn a_region_short_of_voters_gets_one_and_the_target_is_the_common_count() {
        let regions = vec![
            entry(1, &[1, 2, 3]),
            entry(2, &[1, 2, 3]),
            entry(3, &[1, 2]),
        ];
        let st = stores(4, &[]);
        for replicas in [3, 0] {
            let mut s = Scheduler::new(opts());
            let add = proposed(beat_with(&mut s, 0, &regions, 2, &st, replicas));
            assert_eq!(add.kind(), OperatorKind::AddLearner);
            let store = add.peer.as_ref().map(|p| p.store_id);
            assert!(store == Some(3) || store == Some(4), "{store:?}");
        }
        // The recorded target of 2 (or a configured one): nothing to add (store 1 leads
        // every region: a leader transfer is all it may get).
        let no_add = |step: Step| !matches!(step, Step::Propose(op) if op.kind() == OperatorKind::AddLearner);
        let mut s = Scheduler::new(opts());
        assert!(no_add(beat_with(&mut s, 0, &regions, 2, &st, 2)));
        let mut s = Scheduler::new(Options {
            replicas: 2,
            ..opts()
        });
        assert!(no_add(beat(&mut s, 0, &regions, 2, &st)));
    }

    #[test]
    fn a_pending_placement_is_reused() {
        let mut s = Scheduler::new(opts());
        let regions = vec![entry(1, &[1, 2, 3])];
        let st = stores(5, &[3]);
        let cands = candidates(&st, &regions);
        let pending = [PendingPeer {
            region_id: 1,
            peer: Some(Peer {
                id: 77,
                store_id: 5,
                core: Some(1),
                learner: false,
            }),
        }];
        let view = ClusterView {
            replicas: 3,
            regions: &regions,
            stores: &st,
            candidates: &cands,
            pending: &pending,
            sizes: &HashMap::new(),
            loads: &HashMap::new(),
        };
        let add = proposed(s.on_heartbeat(0, &regions[0].region, regions[0].leader_peer_id, &view));
        assert_eq!(
            add.peer.as_ref().map(|p| (p.id, p.store_id, p.learner)),
            Some((77, 5, true))
        );
    }

    #[test]
    fn one_operator_per_region_and_a_bounded_number_of_repairs() {
        let mut s = Scheduler::new(Options {
            max_repair: 2,
            ..opts()
        });
        let regions: Vec<RegionEntry> = (1..=4).map(|i| entry(i, &[1, 2, 3])).collect();
        let st = stores(4, &[3]);
        for i in 0..2 {
            let op = proposed(beat(&mut s, 0, &regions, i, &st));
            s.start(
                Operator {
                    peer: Some(Peer {
                        id: 100 + i as u64,
                        ..op.peer.clone().expect("peer")
                    }),
                    ..op
                },
                0,
            );
        }
        assert!(matches!(beat(&mut s, 0, &regions, 0, &st), Step::Resend(_)));
        assert_eq!(
            beat(&mut s, 0, &regions, 2, &st),
            Step::Nothing,
            "two repairs in flight"
        );
        assert_eq!(s.in_flight(5).len(), 2);
        assert!(s.in_flight(5).iter().all(|o| o.age_ms == 5));
    }

    #[test]
    fn an_operator_toward_a_store_that_went_down_is_dropped_at_once() {
        let mut s = Scheduler::new(opts());
        let regions = vec![entry(1, &[1, 2, 3])];
        let st = stores(5, &[3]);
        let op = proposed(beat(&mut s, 0, &regions, 0, &st));
        let target = op.peer.clone().expect("peer").store_id;
        s.start(
            Operator {
                peer: Some(Peer {
                    id: 50,
                    ..op.peer.clone().expect("peer")
                }),
                ..op
            },
            0,
        );
        assert!(matches!(
            beat(&mut s, 10, &regions, 0, &st),
            Step::Resend(_)
        ));
        // The new replica's store dies too: the operator cannot finish; a new one goes
        // to the remaining spare store without waiting for the timeout.
        let st = stores(5, &[3, target]);
        let again = proposed(beat(&mut s, 20, &regions, 0, &st));
        assert_eq!(again.kind(), OperatorKind::AddLearner);
        let other = again.peer.expect("peer").store_id;
        assert!(other != target && other != 3, "{other}");
        assert_eq!(s.counters(), (1, 0, 1));
    }

    #[test]
    fn an_operator_expires_and_its_region_cools_down() {
        let o = opts();
        let mut s = Scheduler::new(o.clone());
        let regions = vec![entry(1, &[1, 2, 3])];
        let st = stores(4, &[3]);
        let op = proposed(beat(&mut s, 0, &regions, 0, &st));
        s.start(
            Operator {
                peer: Some(Peer {
                    id: 50,
                    ..op.peer.clone().expect("peer")
                }),
                ..op
            },
            0,
        );
        assert!(matches!(
            beat(&mut s, o.timeout_ms - 1, &regions, 0, &st),
            Step::Resend(_)
        ));
        assert_eq!(
            beat(&mut s, o.timeout_ms, &regions, 0, &st),
            Step::Nothing,
            "expired, cooling down"
        );
        assert_eq!(s.counters(), (1, 0, 1));
        let again = o.timeout_ms + o.cooldown_ms;
        assert!(matches!(
            beat(&mut s, again, &regions, 0, &st),
            Step::Propose(_)
        ));
    }

    #[test]
    fn switched_off_nothing_new_is_issued() {
        let mut s = Scheduler::new(Options {
            enabled: false,
            ..opts()
        });
        let regions = vec![entry(1, &[1, 2, 3])];
        assert_eq!(
            beat(&mut s, 0, &regions, 0, &stores(4, &[3])),
            Step::Nothing
        );
        s.set_enabled(true);
        assert!(matches!(
            beat(&mut s, 0, &regions, 0, &stores(4, &[3])),
            Step::Propose(_)
        ));
    }

    /// Nine regions on stores 1..=3, all led by store 1.
    fn skewed() -> Vec<RegionEntry> {
        (1..=9).map(|i| entry(i, &[1, 2, 3])).collect()
    }

    #[test]
    fn a_store_leading_too_many_regions_hands_one_to_the_least_leading_store() {
        let mut s = Scheduler::new(opts());
        let mut regions = skewed();
        // Store 2 already leads one.
        regions[8].leader_peer_id = regions[8].region.peers[1].id;
        let st = stores(3, &[]);
        let op = proposed(beat(&mut s, 0, &regions, 0, &st));
        assert_eq!(op.kind(), OperatorKind::TransferLeader);
        assert_eq!(
            op.peer.as_ref().map(|p| p.store_id),
            Some(3),
            "the store leading fewest"
        );
        assert_eq!(op.from_store, 1);
        s.start(op, 0);
        // In flight counts as done: the next goes to store 2 or 3, each leading one.
        let next = proposed(beat(&mut s, 0, &regions, 1, &st));
        assert!(matches!(
            next.peer.as_ref().map(|p| p.store_id),
            Some(2 | 3)
        ));
        // The transfer shows: done, and the region cools down.
        regions[0].leader_peer_id = regions[0].region.peers[2].id;
        assert_eq!(beat(&mut s, 100, &regions, 0, &st), Step::Nothing);
        assert_eq!(s.counters().1, 1);
    }

    /// Nine regions on stores 1..=3, three led by each; store 1's are hot (300 requests
    /// per second each), the others' cool (30).
    fn hot_store_1() -> (Vec<RegionEntry>, HashMap<u64, u64>) {
        let mut regions = skewed();
        let mut loads = HashMap::new();
        for (i, r) in regions.iter_mut().enumerate() {
            r.leader_peer_id = r.region.peers[i % 3].id;
            loads.insert(r.region.id, if i % 3 == 0 { 300 } else { 30 });
        }
        (regions, loads)
    }

    /// Requests per second led per store 1..=3.
    fn led_load(regions: &[RegionEntry], loads: &HashMap<u64, u64>) -> Vec<u64> {
        (1..=3)
            .map(|s| {
                regions
                    .iter()
                    .filter(|e| e.region.peer(e.leader_peer_id).map(|p| p.store_id) == Some(s))
                    .map(|e| loads[&e.region.id])
                    .sum()
            })
            .collect()
    }

    #[test]
    fn a_store_leading_too_much_load_hands_leaders_over_until_within_a_quarter_of_the_mean() {
        let (mut regions, loads) = hot_store_1();
        let st = stores(3, &[]);
        assert_eq!(led_load(&regions, &loads), vec![900, 90, 90]);
        let mut s = Scheduler::new(opts());
        // Counts are balanced (3 / 3 / 3): only load moves leaders.
        let mut moves = Vec::new();
        for round in 0..20u64 {
            let now = round * 20_000;
            for i in 0..regions.len() {
                if let Step::Propose(op) =
                    beat_loaded(&mut s, now, &regions, i, &st, 3, &HashMap::new(), &loads)
                {
                    assert_eq!(op.kind(), OperatorKind::TransferLeader, "{op:?}");
                    assert_eq!(op.reason, BALANCE_LOAD);
                    let to = op.peer.clone().expect("a target");
                    s.start(op.clone(), now);
                    // The transfer happens; the region's next heartbeat shows it done.
                    regions[i].leader_peer_id = to.id;
                    let shown =
                        beat_loaded(&mut s, now, &regions, i, &st, 3, &HashMap::new(), &loads);
                    assert_eq!(shown, Step::Nothing);
                    moves.push(op);
                }
            }
        }
        let led = led_load(&regions, &loads);
        let mean = led.iter().sum::<u64>() / 3;
        assert!(
            led.iter().all(|&l| l * 4 <= mean * 5),
            "led load {led:?} (mean {mean}) after {moves:?}"
        );
        assert_eq!(
            moves.len(),
            2,
            "two hot regions moved, nothing moved back: {moves:?}"
        );
        // Each move left store 1, and only hot regions went.
        assert!(moves
            .iter()
            .all(|m| m.from_store == 1 && loads[&m.region_id] == 300));
    }

    #[test]
    fn load_balance_needs_a_real_gap_a_region_that_fits_it_and_room_under_the_count_bound() {
        let st = stores(3, &[]);
        let (regions, loads) = hot_store_1();
        // Unknown loads, or every store as busy: nothing.
        let mut s = Scheduler::new(opts());
        assert_eq!(beat(&mut s, 0, &regions, 0, &st), Step::Nothing);
        let even: HashMap<u64, u64> = loads.keys().map(|&r| (r, 100)).collect();
        assert_eq!(
            beat_loaded(&mut s, 0, &regions, 0, &st, 3, &HashMap::new(), &even),
            Step::Nothing
        );
        // A gap below balance_min_qps: nothing.
        let mut s = Scheduler::new(Options {
            balance_min_qps: 1000,
            ..opts()
        });
        assert_eq!(
            beat_loaded(&mut s, 0, &regions, 0, &st, 3, &HashMap::new(), &loads),
            Step::Nothing
        );
        // A region as hot as the gap stays where it is (it would only move the imbalance):
        // store 1 leads 900 in region 1 and idle regions 4 and 7, the others 90 each.
        let mut hot = loads.clone();
        hot.extend([(1, 900), (4, 0), (7, 0)]);
        let mut s = Scheduler::new(opts());
        assert_eq!(
            beat_loaded(&mut s, 0, &regions, 0, &st, 3, &HashMap::new(), &hot),
            Step::Nothing
        );
        // The least-loaded store already at the count bound gets no leader. Store 1 leads
        // two hot regions (600), store 2 three warm ones (300), store 3 four cool ones
        // (40): the bound is ceil(9 / 3) + 1 = 4, which store 3 is at.
        let mut regions = skewed();
        let mut loads = HashMap::new();
        for (i, r) in regions.iter_mut().enumerate() {
            let (at, load) = match i {
                0 | 1 => (0, 300),
                2..=4 => (1, 100),
                _ => (2, 10),
            };
            r.leader_peer_id = r.region.peers[at].id;
            loads.insert(r.region.id, load);
        }
        let mut s = Scheduler::new(opts());
        assert_eq!(
            beat_loaded(&mut s, 0, &regions, 0, &st, 3, &HashMap::new(), &loads),
            Step::Nothing
        );
        // With one of store 3's leaders on store 2 instead, store 3 takes the hot region.
        regions[8].leader_peer_id = regions[8].region.peers[1].id;
        let op = proposed(beat_loaded(
            &mut s,
            0,
            &regions,
            0,
            &st,
            3,
            &HashMap::new(),
            &loads,
        ));
        assert_eq!(op.peer.map(|p| p.store_id), Some(3));
        assert_eq!(op.reason, BALANCE_LOAD);
    }

    #[test]
    fn leader_balance_stops_within_one_of_the_mean_and_respects_its_limit() {
        let st = stores(3, &[]);
        let mut regions = skewed();
        // 5 / 2 / 2: the limit is ceil(9 / 3) + 1 = 4 and store 1 leads 5.
        for (i, r) in regions.iter_mut().enumerate().skip(5) {
            r.leader_peer_id = r.region.peers[1 + i % 2].id;
        }
        let mut s = Scheduler::new(opts());
        assert!(matches!(
            beat(&mut s, 0, &regions, 0, &st),
            Step::Propose(_)
        ));
        // 4 / 3 / 2: within the limit.
        regions[0].leader_peer_id = regions[0].region.peers[1].id;
        let mut s = Scheduler::new(opts());
        assert_eq!(beat(&mut s, 0, &regions, 1, &st), Step::Nothing);
        // At most `max_leader_moves` transfers at once.
        let mut s = Scheduler::new(Options {
            max_leader_moves: 1,
            ..opts()
        });
        let regions = skewed();
        let op = proposed(beat(&mut s, 0, &regions, 0, &st));
        s.start(op, 0);
        assert_eq!(beat(&mut s, 0, &regions, 1, &st), Step::Nothing);
    }

    #[test]
    fn leader_ties_go_to_the_least_leading_core() {
        let mut st = stores(3, &[]);
        st[1].core_leaders = vec![0, 5];
        st[2].core_leaders = vec![0, 1];
        let mut regions = skewed();
        for r in &mut regions {
            for p in &mut r.region.peers {
                p.core = Some(1);
            }
        }
        let mut s = Scheduler::new(opts());
        let op = proposed(beat(&mut s, 0, &regions, 0, &st));
        assert_eq!(op.peer.as_ref().map(|p| p.store_id), Some(3));
    }

    #[test]
    fn no_leader_moves_for_a_region_with_a_down_voter_or_from_a_down_store() {
        let mut s = Scheduler::new(Options {
            max_repair: 0,
            ..opts()
        });
        let regions = skewed();
        // Store 3 down: every region needs repair (none allowed), and no transfer either.
        assert_eq!(
            beat(&mut s, 0, &regions, 0, &stores(4, &[3])),
            Step::Nothing
        );
        let mut s = Scheduler::new(opts());
        assert_eq!(
            beat(&mut s, 0, &regions, 0, &stores(3, &[1])),
            Step::Nothing
        );
    }

    /// Replicas per store in `regions`.
    fn replica_counts(regions: &[RegionEntry], st: &[StoreView]) -> Vec<u64> {
        st.iter()
            .map(|s| {
                regions
                    .iter()
                    .flat_map(|e| e.region.peers.iter())
                    .filter(|p| p.store_id == s.store_id)
                    .count() as u64
            })
            .collect()
    }

    /// Applies `op` to `regions` as the region's leader would (allocating a peer id).
    fn apply_op(regions: &mut [RegionEntry], op: &Operator, next_peer: &mut u64) -> Operator {
        let mut op = op.clone();
        let e = regions
            .iter_mut()
            .find(|e| e.region.id == op.region_id)
            .expect("region");
        let mut peer = op.peer.clone().expect("peer");
        match op.kind() {
            OperatorKind::AddLearner => {
                if peer.id == 0 {
                    *next_peer += 1;
                    peer.id = *next_peer;
                }
                e.region.peers.push(peer.clone());
            }
            OperatorKind::Promote => {
                for p in &mut e.region.peers {
                    if p.id == peer.id {
                        p.learner = false;
                    }
                }
            }
            OperatorKind::RemovePeer => {
                assert_ne!(peer.id, e.leader_peer_id, "the leader is never removed");
                e.region.peers.retain(|p| p.id != peer.id);
            }
            OperatorKind::TransferLeader => e.leader_peer_id = peer.id,
            OperatorKind::Unknown => panic!("unknown operator"),
        }
        op.peer = Some(peer);
        op
    }

    /// Heartbeats every region once per round (20 s apart) and runs each operator at once,
    /// until a round issues nothing; every region keeps at least `target` voters on up
    /// stores throughout. Returns the operators run.
    fn run_until_quiet(
        s: &mut Scheduler,
        regions: &mut [RegionEntry],
        st: &[StoreView],
        target: usize,
    ) -> Vec<Operator> {
        run_sized_until_quiet(s, regions, st, target, &HashMap::new())
    }

    /// [`run_until_quiet`] with the regions' reported sizes.
    fn run_sized_until_quiet(
        s: &mut Scheduler,
        regions: &mut [RegionEntry],
        st: &[StoreView],
        target: usize,
        sizes: &HashMap<u64, (u64, u64)>,
    ) -> Vec<Operator> {
        let mut next_peer = 10_000;
        let mut ran = Vec::new();
        for round in 0..200u64 {
            let now = round * 20_000;
            let mut issued = false;
            for i in 0..regions.len() {
                match beat_sized(s, now, regions, i, st, 3, sizes) {
                    Step::Propose(op) => {
                        let op = apply_op(regions, &op, &mut next_peer);
                        s.start(op.clone(), now);
                        ran.push(op);
                        issued = true;
                    }
                    Step::Resend(op) => panic!("applied at once, yet resent: {op:?}"),
                    Step::Nothing => {}
                }
                for e in regions.iter() {
                    let voters = e.region.peers.iter().filter(|p| !p.learner).count();
                    assert!(
                        voters >= target,
                        "region {} fell to {voters} voters",
                        e.region.id
                    );
                }
            }
            if !issued {
                return ran;
            }
        }
        panic!("the scheduler never settled");
    }

    #[test]
    fn a_skewed_catalog_converges_to_within_one_of_the_limit() {
        // Twelve regions on stores 1..=3, stores 4 and 5 empty: 12/12/12/0/0.
        let mut regions: Vec<RegionEntry> = (1..=12).map(|i| entry(i, &[1, 2, 3])).collect();
        // Spread the leaders so that leader balance has nothing to do.
        for (i, r) in regions.iter_mut().enumerate() {
            r.leader_peer_id = r.region.peers[i % 3].id;
        }
        let st = stores(5, &[]);
        let mut s = Scheduler::new(Options {
            max_balance: 1,
            ..opts()
        });
        let ran = run_until_quiet(&mut s, &mut regions, &st, 3);
        let counts = replica_counts(&regions, &st);
        let total: u64 = counts.iter().sum();
        assert_eq!(total, 36, "{counts:?}");
        let limit = total.div_ceil(5) + 1;
        assert!(counts.iter().all(|c| *c <= limit), "{counts:?}");
        assert!(counts[3] > 0 && counts[4] > 0, "{counts:?}");
        assert!(ran.iter().any(|o| o.reason == BALANCE_REGION));
        for e in &regions {
            assert_eq!(e.region.peers.len(), 3, "every region back to three voters");
            let mut stores: Vec<u64> = e.region.peers.iter().map(|p| p.store_id).collect();
            stores.dedup();
            assert_eq!(stores.len(), 3);
        }
    }

    #[test]
    fn a_balanced_catalog_moves_nothing() {
        // 3 regions x 3 replicas over 4 stores: 3/2/2/2 is within ceil(9 / 4) + 1 = 4.
        let regions = vec![
            entry(1, &[1, 2, 3]),
            entry(2, &[2, 3, 4]),
            entry(3, &[4, 1, 2]),
        ];
        let mut s = Scheduler::new(opts());
        for i in 0..3 {
            assert_eq!(beat(&mut s, 0, &regions, i, &stores(4, &[])), Step::Nothing);
        }
    }

    /// Nine regions on stores 1..=3, leaders spread, stores 4 and 5 empty.
    fn spread() -> Vec<RegionEntry> {
        let mut regions: Vec<RegionEntry> = (1..=9).map(|i| entry(i, &[1, 2, 3])).collect();
        for (i, r) in regions.iter_mut().enumerate() {
            r.leader_peer_id = r.region.peers[i % 3].id;
        }
        regions
    }

    #[test]
    fn replica_balance_respects_its_limit_and_one_operator_per_region() {
        let regions = spread();
        let st = stores(5, &[]);
        let mut s = Scheduler::new(opts());
        for i in 0..2 {
            let op = proposed(beat(&mut s, 0, &regions, i, &st));
            assert_eq!(
                (op.kind(), op.reason.as_str()),
                (OperatorKind::AddLearner, BALANCE_REGION)
            );
            assert!(matches!(op.peer.as_ref().map(|p| p.store_id), Some(4 | 5)));
            assert!((1..=3).contains(&op.from_store));
            s.start(
                Operator {
                    peer: Some(Peer {
                        id: 500 + i as u64,
                        ..op.peer.clone().expect("peer")
                    }),
                    ..op
                },
                0,
            );
        }
        assert!(matches!(beat(&mut s, 0, &regions, 0, &st), Step::Resend(_)));
        assert_eq!(
            beat(&mut s, 0, &regions, 2, &st),
            Step::Nothing,
            "two moves in flight (max_balance 2)"
        );
        // Leader balance keeps its own limit: unaffected here (leaders are spread).
        assert_eq!(s.in_flight(0).len(), 2);
    }

    fn no_move(step: &Step) -> bool {
        !matches!(step, Step::Propose(op) if op.reason == BALANCE_REGION)
    }

    #[test]
    fn nothing_moves_while_a_store_with_replicas_is_down_or_a_repair_runs() {
        // Store 6 is down and holds a replica of region 10 (which gets a repair).
        let mut regions = spread();
        regions.push(entry(10, &[1, 2, 6]));
        let st = stores(6, &[6]);
        let mut s = Scheduler::new(Options {
            max_repair: 0,
            ..opts()
        });
        for i in 0..9 {
            let step = beat(&mut s, 0, &regions, i, &st);
            assert!(no_move(&step), "region {i}: {step:?}");
        }
        // The repair runs (store 6's replica replaced): still nothing else moves meanwhile.
        let mut s = Scheduler::new(opts());
        let repair = proposed(beat(&mut s, 0, &regions, 9, &st));
        assert_eq!(repair.reason, REPAIR);
        s.start(
            Operator {
                peer: Some(Peer {
                    id: 600,
                    ..repair.peer.clone().expect("peer")
                }),
                ..repair
            },
            0,
        );
        let st = stores(6, &[]);
        for i in 0..9 {
            let step = beat(&mut s, 0, &regions, i, &st);
            assert!(no_move(&step), "region {i}: {step:?}");
        }
        // Once it is done and nothing is down, balance starts.
        let mut s = Scheduler::new(opts());
        assert!(
            matches!(beat(&mut s, 0, &regions, 0, &st), Step::Propose(op) if op.reason == BALANCE_REGION)
        );
    }

    #[test]
    fn a_move_off_the_leaders_store_transfers_the_leadership_before_the_removal() {
        // Region 1 has a fourth voter (a move half done): the one to go is on store 1,
        // which holds the most replicas and leads the region.
        let mut regions = spread();
        regions[0].region.peers.push(peer(99, 4));
        regions.push(entry(10, &[4, 1, 5]));
        assert_eq!(regions[0].leader_peer_id, regions[0].region.peers[0].id);
        let st = stores(5, &[]);
        let mut s = Scheduler::new(opts());
        let op = proposed(beat(&mut s, 0, &regions, 0, &st));
        assert_eq!(op.kind(), OperatorKind::TransferLeader);
        assert_eq!(op.from_store, 1);
        assert_ne!(op.peer.as_ref().map(|p| p.store_id), Some(1));
        s.start(op.clone(), 0);
        regions[0].leader_peer_id = op.peer.expect("peer").id;
        let op = proposed(beat(&mut s, 100, &regions, 0, &st));
        assert_eq!(op.kind(), OperatorKind::RemovePeer);
        assert_eq!(op.peer.as_ref().map(|p| p.store_id), Some(1));
    }

    /// `stores(n, down)` with `drained` marked decommissioning.
    fn draining(n: u64, drained: u64) -> Vec<StoreView> {
        let mut st = stores(n, &[]);
        for s in &mut st {
            s.decommissioning = s.store_id == drained;
        }
        st
    }

    #[test]
    fn a_decommissioned_store_is_drained_leaders_first_never_below_the_target() {
        let mut regions = spread();
        let st = draining(4, 3);
        let mut s = Scheduler::new(opts());
        let ran = run_until_quiet(&mut s, &mut regions, &st, 3);
        for e in &regions {
            assert_eq!(e.region.peers.len(), 3);
            assert!(
                e.region.peers.iter().all(|p| p.store_id != 3),
                "{:?}",
                e.region
            );
        }
        assert!(
            ran.iter()
                .all(|o| o.reason == DECOMMISSION || o.reason == BALANCE),
            "{ran:?}"
        );
        // Regions 3, 6 and 9 were led from store 3: each handed its leadership away.
        let transfers = ran
            .iter()
            .filter(|o| o.kind() == OperatorKind::TransferLeader && o.from_store == 3)
            .count();
        assert_eq!(transfers, 3);
        // Nothing moved *to* the drained store (no learner, no leadership).
        assert!(ran.iter().all(|o| o.kind() == OperatorKind::RemovePeer
            || o.peer.as_ref().map(|p| p.store_id) != Some(3)));
    }

    #[test]
    fn a_decommission_without_a_spare_store_removes_nothing_and_a_drained_learner_goes() {
        let mut regions = spread();
        let st = draining(3, 3);
        let mut s = Scheduler::new(opts());
        let ran = run_until_quiet(&mut s, &mut regions, &st, 3);
        assert!(
            ran.iter().all(|o| o.kind() != OperatorKind::RemovePeer),
            "{ran:?}"
        );
        // A learner on the drained store is removed at once.
        let mut regions = spread();
        regions[0].region.peers.push(Peer {
            learner: true,
            ..peer(77, 4)
        });
        let st = draining(4, 4);
        let op = proposed(beat(&mut Scheduler::new(opts()), 0, &regions, 0, &st));
        assert_eq!(
            (op.kind(), op.reason.as_str()),
            (OperatorKind::RemovePeer, DECOMMISSION)
        );
        assert_eq!(op.peer.map(|p| p.id), Some(77));
    }

    #[test]
    fn leaders_are_not_balanced_onto_a_decommissioning_store() {
        let regions = skewed();
        let op = proposed(beat(
            &mut Scheduler::new(opts()),
            0,
            &regions,
            0,
            &draining(3, 3),
        ));
        // Region 1 is drained (a new learner is needed somewhere): with only three stores
        // there is none, so the step is a leader transfer, and it goes to store 2.
        assert_eq!(op.peer.as_ref().map(|p| p.store_id), Some(2), "{op:?}");
    }

    #[test]
    fn replica_balance_never_puts_two_replicas_of_a_region_on_one_host() {
        // Twelve regions on stores 1..=3 (hosts a, b, c), stores 4 and 5 empty but on hosts
        // a and b: every move would pair a region's replicas on one host, so none happens.
        let regions: Vec<RegionEntry> = (1..=12).map(|i| entry(i, &[1, 2, 3])).collect();
        let st = stores(5, &[]);
        let mut cands = candidates(&st, &regions);
        for (c, host) in cands.iter_mut().zip(["a", "b", "c", "a", "b"]) {
            c.host = Some(host.into());
        }
        let view = ClusterView {
            replicas: 3,
            regions: &regions,
            stores: &st,
            candidates: &cands,
            pending: &[],
            sizes: &HashMap::new(),
            loads: &HashMap::new(),
        };
        let mut s = Scheduler::new(opts());
        for e in &regions {
            let step = s.on_heartbeat(0, &e.region, e.leader_peer_id, &view);
            assert!(no_move(&step), "{step:?}");
        }
        // Store 5 on its own host: it takes replicas.
        cands[4].host = Some("d".into());
        let view = ClusterView {
            replicas: 3,
            regions: &regions,
            stores: &st,
            candidates: &cands,
            pending: &[],
            sizes: &HashMap::new(),
            loads: &HashMap::new(),
        };
        let op = proposed(s.on_heartbeat(0, &regions[0].region, regions[0].leader_peer_id, &view));
        assert_eq!(op.peer.map(|p| p.store_id), Some(5));
    }

    /// Sixteen regions, four on each 3-of-4 combination of stores 1..=4 (12 replicas per
    /// store), leaders spread; every region with a replica on store 1 holds 100 bytes, the
    /// others 10: store 1 holds 1 200 bytes, the others 840 each.
    fn heavy_on_store_1() -> (Vec<RegionEntry>, HashMap<u64, (u64, u64)>) {
        let combos = [[1, 2, 3], [1, 2, 4], [1, 3, 4], [2, 3, 4]];
        let mut regions = Vec::new();
        let mut sizes = HashMap::new();
        for i in 0..16u64 {
            let stores = combos[(i % 4) as usize];
            let mut e = entry(i + 1, &stores);
            e.leader_peer_id = e.region.peers[(i / 4 % 3) as usize].id;
            sizes.insert(i + 1, (if stores[0] == 1 { 100 } else { 10 }, 1));
            regions.push(e);
        }
        (regions, sizes)
    }

    /// Bytes per store of `regions` as `sizes` say.
    fn bytes_per_store(
        regions: &[RegionEntry],
        st: &[StoreView],
        sizes: &HashMap<u64, (u64, u64)>,
    ) -> Vec<u64> {
        st.iter()
            .map(|s| {
                regions
                    .iter()
                    .filter(|e| e.region.peers.iter().any(|p| p.store_id == s.store_id))
                    .map(|e| sizes[&e.region.id].0)
                    .sum()
            })
            .collect()
    }

    #[test]
    fn a_store_holding_too_many_bytes_sheds_replicas_until_within_a_quarter_of_the_mean() {
        let (mut regions, sizes) = heavy_on_store_1();
        let st = stores(4, &[]);
        let before = bytes_per_store(&regions, &st, &sizes);
        assert_eq!(before, vec![1200, 840, 840, 840]);
        let mut s = Scheduler::new(Options {
            balance_min_bytes: 0,
            ..opts()
        });
        let ran = run_sized_until_quiet(&mut s, &mut regions, &st, 3, &sizes);
        assert!(ran.iter().any(|o| o.reason == BALANCE_SIZE), "{ran:?}");
        let after = bytes_per_store(&regions, &st, &sizes);
        let mean = after.iter().sum::<u64>() / 4;
        assert!(
            after.iter().all(|b| *b * 4 <= mean * 5),
            "{after:?} (mean {mean})"
        );
        let counts = replica_counts(&regions, &st);
        assert!(
            counts.iter().all(|c| *c <= 48u64.div_ceil(4) + 1),
            "{counts:?}"
        );
        for e in &regions {
            let mut stores: Vec<u64> = e.region.peers.iter().map(|p| p.store_id).collect();
            stores.sort_unstable();
            stores.dedup();
            assert_eq!(
                stores.len(),
                3,
                "three voters on three stores: {:?}",
                e.region
            );
        }
        // The replica removed in each move is the one on the heavy store.
        for o in ran.iter().filter(|o| o.kind() == OperatorKind::RemovePeer) {
            assert_eq!(o.peer.as_ref().map(|p| p.store_id), Some(1), "{o:?}");
        }
    }

    fn no_size_move(step: &Step) -> bool {
        !matches!(step, Step::Propose(op) if op.reason == BALANCE_SIZE)
    }

    #[test]
    fn size_balance_waits_for_every_size_and_ignores_small_gaps() {
        let (regions, mut sizes) = heavy_on_store_1();
        let st = stores(4, &[]);
        // Under the minimum gap: nothing moves.
        let mut s = Scheduler::new(opts());
        for i in 0..regions.len() {
            let step = beat_sized(&mut s, 0, &regions, i, &st, 3, &sizes);
            assert!(no_size_move(&step), "region {i}: {step:?}");
        }
        // One region's size not reported yet (a new coordinator leader): nothing moves.
        sizes.remove(&16);
        let mut s = Scheduler::new(Options {
            balance_min_bytes: 0,
            ..opts()
        });
        for i in 0..regions.len() {
            let step = beat_sized(&mut s, 0, &regions, i, &st, 3, &sizes);
            assert!(no_size_move(&step), "region {i}: {step:?}");
        }
    }
}

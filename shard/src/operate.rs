//! Runs the coordinator scheduler's operators on the core that leads their region.
//!
//! The heartbeat thread puts each operator the coordinator answers a region heartbeat with
//! into this core's [`OperatorQueue`] (`crate::cluster`). Every [`OPERATOR_POLL`] the core
//! takes what is queued and runs each operator with the same membership functions as the
//! `NOKV.REGION` operator commands (`admin.rs`): add a learner (the peer id, store and
//! core the coordinator placed), promote it, remove a peer, transfer the leadership. An
//! operator for a region this core does not lead (any more) is skipped: the coordinator
//! resends it to whoever reports as leader. At most [`MAX_RUNNING`] operators run at once
//! per core, one per region; the others wait here (bounded), and a failed one is logged
//! and counted, then left to the coordinator to resend.
//!
//! A child module of `node` (it works on the core's private state).

use super::admin;
use super::*;
use crate::cluster::{OperatorQueue, OPERATOR_POLL, OPERATOR_QUEUE};
use nokv_coordinator::proto::{Operator, OperatorKind};
use nokv_raft::PeerMeta;
use std::collections::VecDeque;

/// Operators running at once on one core.
pub const MAX_RUNNING: usize = 2;
/// Longest a promotion waits for its learner to catch up before it fails (and is resent).
const PROMOTE_WAIT: Duration = Duration::from_secs(5);
/// Operators run, by result (`done`, `failed`, `skipped`: this core does not lead the region).
pub const OPERATORS_TOTAL: &str = "nokv_scheduler_operators_total";

/// Registers the operators' counters (after the recorder is installed), so that they are
/// exported before the first operator.
pub fn register_metrics() {
    for result in ["done", "failed", "skipped"] {
        metrics::counter!(OPERATORS_TOTAL, "result" => result).increment(0);
    }
}

fn count(result: &'static str) {
    metrics::counter!(OPERATORS_TOTAL, "result" => result).increment(1);
}

/// Polls this core's operator queue until the core stops, and runs what it finds.
pub(super) async fn run_operators(core: Rc<Core>, queue: Arc<OperatorQueue>) {
    // Regions with an operator running on this core.
    let running: Rc<RefCell<HashSet<u64>>> = Rc::new(RefCell::new(HashSet::new()));
    // Operators taken from the queue and not started yet (bounded, one per region).
    let mut waiting: VecDeque<Operator> = VecDeque::new();
    while sleep_unless_stopped(&core, OPERATOR_POLL).await {
        for op in queue.take(core.id) {
            // The newest operator of a region replaces a waiting one.
            waiting.retain(|w| w.region_id != op.region_id);
            if waiting.len() >= OPERATOR_QUEUE {
                tracing::debug!(
                    region = op.region_id,
                    op = op.id,
                    "too many operators waiting: dropped (the coordinator resends it)"
                );
                continue;
            }
            waiting.push_back(op);
        }
        let mut later = VecDeque::new();
        while let Some(op) = waiting.pop_front() {
            if running.borrow().contains(&op.region_id) {
                later.push_back(op);
                continue;
            }
            if running.borrow().len() >= MAX_RUNNING {
                later.push_back(op);
                continue;
            }
            if !core.raft.borrow().is_leader(op.region_id) {
                tracing::debug!(
                    region = op.region_id,
                    op = op.id,
                    core = core.id,
                    "operator skipped: this core does not lead the region"
                );
                count("skipped");
                continue;
            }
            running.borrow_mut().insert(op.region_id);
            let (c, r) = (core.clone(), running.clone());
            glommio::spawn_local(async move {
                let region = op.region_id;
                run_one(&c, op).await;
                r.borrow_mut().remove(&region);
            })
            .detach();
        }
        waiting = later;
    }
}

/// Sleeps `d`; false (at once) when the core stops meanwhile.
async fn sleep_unless_stopped(core: &Core, d: Duration) -> bool {
    future::or(
        async {
            glommio::timer::sleep(d).await;
            true
        },
        async {
            core.stop.wait().await;
            false
        },
    )
    .await
}

/// Runs one operator; logs and counts the result.
async fn run_one(core: &Rc<Core>, op: Operator) {
    let (region, id, kind) = (op.region_id, op.id, op.kind());
    let peer = op.peer.clone().unwrap_or_default();
    match execute(core, &op).await {
        Ok(Outcome::Done) => {
            tracing::info!(region, op = id, kind = ?kind, reason = %op.reason, peer = peer.id, store = peer.store_id, "scheduler operator done");
            count("done");
        }
        Ok(Outcome::Skipped(why)) => {
            tracing::debug!(region, op = id, kind = ?kind, why, "scheduler operator skipped");
            count("skipped");
        }
        Err(e) => {
            tracing::warn!(region, op = id, kind = ?kind, reason = %op.reason, peer = peer.id, store = peer.store_id, error = %e, "scheduler operator failed (the coordinator resends it)");
            count("failed");
        }
    }
}

/// What became of an operator that did not fail.
#[derive(Debug)]
enum Outcome {
    /// The change is applied (or was already in effect).
    Done,
    /// Not run: this core does not lead the region.
    Skipped(&'static str),
}

/// Runs `op` on its region if this core leads it; the error is the reply text.
async fn execute(core: &Rc<Core>, op: &Operator) -> std::result::Result<Outcome, String> {
    let Some(cluster) = &core.node.cluster else {
        return Err("not a store of a cluster".into());
    };
    let region = op.region_id;
    let Some(peer) = op.peer.clone() else {
        return Err("operator without a peer".into());
    };
    if !core.raft.borrow().is_leader(region) {
        return Ok(Outcome::Skipped("this core does not lead the region"));
    }
    let desc = admin::led_region(core, region).map_err(reply_text)?;
    let present = desc.peer(peer.id);
    let done = match op.kind() {
        OperatorKind::AddLearner => {
            if present.is_some() {
                return Ok(Outcome::Done);
            }
            admin::add_learner(
                core,
                cluster,
                &desc,
                PeerMeta::learner(peer.store_id, peer.id),
            )
            .await
        }
        OperatorKind::Promote => match present {
            None => return Err(format!("peer {} is not in the region", peer.id)),
            Some(p) if p.role == nokv_raft::PeerRole::Voter => return Ok(Outcome::Done),
            Some(p) => {
                caught_up(core, region, p.peer_id).await;
                admin::promote(core, &desc, p.store_id).await
            }
        },
        OperatorKind::RemovePeer => match present {
            None => return Ok(Outcome::Done),
            Some(p) => admin::remove_peer(core, cluster, &desc, p.store_id).await,
        },
        OperatorKind::TransferLeader => match present {
            None => return Err(format!("peer {} is not in the region", peer.id)),
            Some(p) => admin::transfer_leader(core, cluster, &desc, p.store_id).await,
        },
        OperatorKind::Unknown => return Err("unknown operator kind".into()),
    };
    done.map(|()| Outcome::Done).map_err(reply_text)
}

/// Waits (at most [`PROMOTE_WAIT`]) until the learner `peer` of `region` is within
/// [`admin::PROMOTE_MAX_LAG`] entries of the leader's log: the scheduler asks for the
/// promotion as soon as a heartbeat shows the learner, usually before it caught up.
async fn caught_up(core: &Rc<Core>, region: u64, peer: u64) {
    let deadline = Instant::now() + PROMOTE_WAIT;
    // Bounded by the deadline.
    while Instant::now() < deadline && !core.stop.is_fired() {
        let progress = core.raft.borrow().progress(region, peer);
        if progress
            .is_some_and(|(matched, last)| last.saturating_sub(matched) <= admin::PROMOTE_MAX_LAG)
        {
            return;
        }
        glommio::timer::sleep(Duration::from_millis(100)).await;
    }
}

/// The text of an error reply (any other reply, debug-formatted).
fn reply_text(reply: Reply) -> String {
    match reply {
        Reply::Error(e) => e,
        other => format!("{other:?}"),
    }
}

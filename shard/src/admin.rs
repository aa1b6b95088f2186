//! Operator commands on a store's Redis port (`NOKV.REGION ...`, docs/redis.md), the
//! creation of a replica this store was added to, the removal of one it was removed
//! from, and the consistency checks' driving (see [`crate::consistency`]).
//!
//! A child module of `node` (it works on the core's private state).

use super::*;
use crate::consistency::{self, PendingHash};
use nokv_raft::{PeerChange, PeerMeta, PeerRole};

/// Most entries a learner may lag behind the leader's log for `PROMOTE`.
pub const PROMOTE_MAX_LAG: u64 = 8;
/// Longest a membership change or leader transfer is waited for.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before a store asks the coordinator again about a region it was sent raft
/// messages for but does not hold.
const CREATE_RETRY: Duration = Duration::from_millis(500);
/// Pause between two looks at a region whose previous membership change is not applied.
const CONF_PENDING_POLL: Duration = Duration::from_millis(20);

/// Why a replica was not created or not deleted on this store.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The coordinator's routes do not (yet) allow creating it.
    #[error("region {region}: {reason}")]
    Refused {
        /// The region.
        region: u64,
        /// Why.
        reason: String,
    },
    /// The raft layer failed (persisting or starting the peer, deleting its descriptor).
    #[error("region {region}: {source}")]
    Raft {
        /// The region.
        region: u64,
        /// The raft layer's error.
        #[source]
        source: nokv_raft::Error,
    },
    /// The engine failed to delete the data.
    #[error("delete the data of region {region}: {source}")]
    Engine {
        /// The region.
        region: u64,
        /// The engine's error.
        #[source]
        source: nokv::Error,
    },
}

/// The membership version of a region when it is created (bootstrap).
pub const INITIAL_CONF_VERSION: u64 = 1;

/// The help text of `NOKV.REGION`.
const USAGE: &str = "ERR usage: NOKV.REGION LIST | HOT | ADDLEARNER <region> <store> | PROMOTE <region> <store> | REMOVEPEER <region> <store> | TRANSFERLEADER <region> <store> | SPLIT <region> [<slot>] | MERGE <region> <neighbour> | MOVE <region> <core> | CHECK <region> | HASH <region> <index> | LOCALCOUNT <region>";

/// A parsed `NOKV.REGION` subcommand naming a region.
#[derive(Debug, Clone, Copy)]
enum RegionOp {
    AddLearner(u64),
    Promote(u64),
    RemovePeer(u64),
    TransferLeader(u64),
    /// Split at a slot (None: the slot that halves the region's data).
    Split(Option<u16>),
    /// Move to another core of this store.
    Move(u64),
    /// Merge with the adjacent region of this id.
    Merge(u64),
    Check,
    Hash(u64),
    LocalCount,
}

fn parse_u64(arg: &[u8], what: &str) -> std::result::Result<u64, Reply> {
    std::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| {
            Reply::error(format!(
                "ERR {what} must be a positive integer, got '{}'",
                String::from_utf8_lossy(&arg[..arg.len().min(64)])
            ))
        })
}

/// Parses `NOKV.REGION <sub> <region> [<arg>]` into the region and the operation.
fn parse_region_op(args: &[Vec<u8>]) -> std::result::Result<(u64, RegionOp), Reply> {
    let sub = String::from_utf8_lossy(&args[1]).to_ascii_uppercase();
    if sub == "SPLIT" {
        if !(3..=4).contains(&args.len()) {
            return Err(Reply::error(
                "ERR wrong number of arguments for 'nokv.region split'",
            ));
        }
        let region = parse_u64(&args[2], "region")?;
        let slot = match args.get(3) {
            None => None,
            Some(a) => match parse_u64(a, "slot")? {
                s if s < u64::from(nokv_gateway::model::SLOTS) => Some(s as u16),
                s => {
                    return Err(Reply::error(format!(
                        "ERR slot {s} is not a hash slot (0..16383)"
                    )))
                }
            },
        };
        return Ok((region, RegionOp::Split(slot)));
    }
    let want = match sub.as_str() {
        "CHECK" | "LOCALCOUNT" => 3,
        "ADDLEARNER" | "PROMOTE" | "REMOVEPEER" | "TRANSFERLEADER" | "HASH" | "MOVE" | "MERGE" => 4,
        _ => return Err(Reply::error(USAGE)),
    };
    if args.len() != want {
        return Err(Reply::error(format!(
            "ERR wrong number of arguments for 'nokv.region {}'",
            sub.to_ascii_lowercase()
        )));
    }
    let region = parse_u64(&args[2], "region")?;
    let arg = if want == 4 {
        let what = match sub.as_str() {
            "HASH" => "index",
            "MOVE" => "core",
            "MERGE" => "neighbour region",
            _ => "store",
        };
        parse_u64(&args[3], what)?
    } else {
        0
    };
    let op = match sub.as_str() {
        "ADDLEARNER" => RegionOp::AddLearner(arg),
        "PROMOTE" => RegionOp::Promote(arg),
        "REMOVEPEER" => RegionOp::RemovePeer(arg),
        "TRANSFERLEADER" => RegionOp::TransferLeader(arg),
        "HASH" => RegionOp::Hash(arg),
        "MOVE" => RegionOp::Move(arg),
        "MERGE" => RegionOp::Merge(arg),
        "LOCALCOUNT" => RegionOp::LocalCount,
        _ => RegionOp::Check,
    };
    Ok((region, op))
}

/// The core of this store holding `region` (None: no replica here).
pub(super) fn local_core(node: &NodeShared, region: u64) -> Option<usize> {
    if let Some(c) = node.hosted_core(region) {
        return Some(c);
    }
    node.routes
        .current()
        .core_of(region)
        .filter(|c| *c != layout::NOT_HERE)
}

/// `NOKV.COMPACT`: flushes and fully compacts every core's engine, so that space held by
/// deleted and overwritten data (and old transactional versions below the transaction
/// GC safe point) is reclaimed now. Runs on the blocking pool; the store keeps serving.
async fn compact(core: &Rc<Core>) -> Reply {
    let engines = core.node.engines.clone();
    let done = blocking(move || {
        for db in &engines {
            db.compact_full()?;
        }
        Ok::<(), nokv::Error>(())
    })
    .await;
    match done {
        Ok(()) => Reply::ok(),
        Err(e) => Reply::error(format!("ERR compaction failed: {e}")),
    }
}

/// Runs an operator command (`NOKV.*`) that a connection of this core received.
pub(super) async fn execute(core: &Rc<Core>, args: Vec<Vec<u8>>) -> Reply {
    if args[0].eq_ignore_ascii_case(b"NOKV.COMPACT") {
        if args.len() != 1 {
            return Reply::error("ERR wrong number of arguments for 'NOKV.COMPACT'");
        }
        return compact(core).await;
    }
    if !args[0].eq_ignore_ascii_case(b"NOKV.REGION") {
        return Reply::error(format!(
            "ERR unknown command '{}'",
            String::from_utf8_lossy(&args[0][..args[0].len().min(64)])
        ));
    }
    if args.len() < 2 {
        return Reply::error(USAGE);
    }
    let hot = args[1].eq_ignore_ascii_case(b"HOT");
    if args[1].eq_ignore_ascii_case(b"LIST") || hot {
        if args.len() != 2 {
            return Reply::error(USAGE);
        }
        let local: &[u8] = if hot { b"LOCALHOT" } else { b"LOCAL" };
        let mut lines = Vec::new();
        for target in 0..core.node.cores {
            let work = Work::Admin {
                region: 0,
                args: vec![b"NOKV.REGION".to_vec(), local.to_vec()],
            };
            match execute_on(core, target, work).await {
                Reply::Array(mut part) => lines.append(&mut part),
                other => return other,
            }
        }
        if hot {
            // Busiest first, over every core.
            let ops = |r: &Reply| match r {
                Reply::Bulk(b) => String::from_utf8_lossy(b)
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("ops_per_sec=")?.parse::<f64>().ok())
                    .unwrap_or(0.0),
                _ => 0.0,
            };
            lines.sort_by(|a, b| ops(b).total_cmp(&ops(a)));
        }
        return Reply::Array(lines);
    }
    let (region, op) = match parse_region_op(&args) {
        Ok(p) => p,
        Err(reply) => return reply,
    };
    if let RegionOp::LocalCount = op {
        // Every core's engine: a replica removed from this store must have left none.
        let mut total = 0i64;
        for target in 0..core.node.cores {
            let work = Work::Admin {
                region,
                args: args.clone(),
            };
            match execute_on(core, target, work).await {
                Reply::Int(n) => total += n,
                other => return other,
            }
        }
        return Reply::Int(total);
    }
    match local_core(&core.node, region) {
        Some(target) => execute_on(core, target, Work::Admin { region, args }).await,
        None => moved(core, region, None),
    }
}

/// Runs `work` on core `target` of this store (inline when it is this core).
async fn execute_on(core: &Rc<Core>, target: usize, work: Work) -> Reply {
    let answer = if target == core.id {
        execute_local(core, work).await
    } else {
        super::execute(core, target, work).await
    };
    match answer {
        Answer::Reply(reply) => reply,
        // Operator commands go to the leader's store itself.
        Answer::Elsewhere { work, .. } => moved(core, work.region(), None),
        Answer::Stale(work) => Reply::error(format!(
            "ERR region {} changed while the command ran, retry",
            work.region()
        )),
    }
}

/// Runs an operator command for `region` on the core that holds it (`region` 0: `LOCAL`,
/// this core's regions).
pub(super) async fn execute_region(core: &Rc<Core>, region: u64, args: Vec<Vec<u8>>) -> Reply {
    if args.len() == 2 && args[1].eq_ignore_ascii_case(b"LOCAL") {
        return list_local(core);
    }
    if matches!(args.len(), 7 | 9) && args[1].eq_ignore_ascii_case(b"MOVEIN") {
        return super::moves::move_in(core, &args).await;
    }
    if args.len() == 2 && args[1].eq_ignore_ascii_case(b"LOCALHOT") {
        return Reply::Array(
            super::split::hot_local(core)
                .into_iter()
                .map(|(_, line)| line)
                .collect(),
        );
    }
    let op = match parse_region_op(&args) {
        Ok((_, op)) => op,
        Err(reply) => return reply,
    };
    if let RegionOp::Hash(index) = op {
        return match core.node.checks.hash_at(region, index) {
            Some(h) => Reply::Simple(format!("HASH {h:016x}")),
            None => Reply::Simple("PENDING".into()),
        };
    }
    if let RegionOp::Move(to) = op {
        let to = usize::try_from(to).unwrap_or(usize::MAX);
        return match super::moves::move_region(core, region, to).await {
            Ok(()) => Reply::ok(),
            Err(reply) => reply,
        };
    }
    if let RegionOp::Merge(other) = op {
        return match super::merge::merge(core, region, other).await {
            Ok(survivor) => Reply::Int(survivor as i64),
            Err(reply) => reply,
        };
    }
    if let RegionOp::Split(slot) = op {
        return match super::split::split(core, region, slot).await {
            Ok((child, slot)) => {
                Reply::Array(vec![Reply::Int(child as i64), Reply::Int(i64::from(slot))])
            }
            Err(reply) => reply,
        };
    }
    let Some(cluster) = &core.node.cluster else {
        return Reply::error("ERR NOKV.REGION needs a store of a cluster (--coordinator)");
    };
    if let RegionOp::LocalCount = op {
        let known = core.raft.borrow().region(region).cloned();
        let Some(desc) = known.or_else(|| cluster.directory.region(region).map(|(d, _)| d)) else {
            return Reply::error(format!("ERR region {region} is not known here"));
        };
        let db = core.db.clone();
        return match blocking(move || consistency::count_keys(&db, &desc)).await {
            Ok(n) => Reply::Int(n as i64),
            Err(e) => Reply::error(format!("ERR count the keys of region {region}: {e}")),
        };
    }
    let desc = match led_region(core, region) {
        Ok(desc) => desc,
        Err(reply) => return reply,
    };
    let done = match op {
        RegionOp::AddLearner(store) => {
            if let Err(reply) = check_new_learner(cluster, &desc, store).await {
                return reply;
            }
            let client = cluster.client.clone();
            let peer_id = match blocking(move || client.alloc_ids(1)).await {
                Ok(id) => id,
                Err(e) => {
                    return Reply::error(format!(
                        "ERR allocate a peer id from the coordinator: {e}"
                    ))
                }
            };
            let peer = PeerMeta::learner(store, peer_id);
            return match change(core, region, PeerChange::AddLearner(peer)).await {
                Ok(()) => Reply::Int(peer_id as i64),
                Err(reply) => reply,
            };
        }
        RegionOp::Promote(store) => promote(core, &desc, store).await,
        RegionOp::RemovePeer(store) => remove_peer(core, cluster, &desc, store).await,
        RegionOp::TransferLeader(store) => transfer_leader(core, cluster, &desc, store).await,
        RegionOp::Check => return run_check(core, region).await,
        RegionOp::Hash(_)
        | RegionOp::LocalCount
        | RegionOp::Split(_)
        | RegionOp::Move(_)
        | RegionOp::Merge(_) => return Reply::error(USAGE),
    };
    match done {
        Ok(()) => Reply::ok(),
        Err(reply) => reply,
    }
}

/// This core's descriptor of `region` when it leads it; else the reply (`-MOVED`, or an
/// error when the region has no replica on this core).
pub(super) fn led_region(
    core: &Rc<Core>,
    region: u64,
) -> std::result::Result<RegionDescriptor, Reply> {
    let raft = core.raft.borrow();
    let Some(desc) = raft.region(region) else {
        return Err(Reply::error(format!(
            "ERR region {region} is not on this store"
        )));
    };
    if !raft.is_leader(region) {
        drop(raft);
        return Err(moved(core, region, None));
    }
    Ok(desc.clone())
}

/// Checks that a learner of region `desc` may be added on `store`: the store holds no
/// replica of it and is known (asking the coordinator when the directory does not know it
/// yet).
pub(super) async fn check_new_learner(
    cluster: &ClusterNode,
    desc: &RegionDescriptor,
    store: u64,
) -> std::result::Result<(), Reply> {
    let region = desc.id;
    if let Some(p) = desc.peer_on_store(store) {
        return Err(Reply::error(format!(
            "ERR store {store} already holds region {region} (peer {}, {:?})",
            p.peer_id, p.role
        )));
    }
    if cluster.directory.redis_addr(store).is_none() {
        // Registered after the last refresh of the directory: ask the coordinator.
        let client = cluster.client.clone();
        match blocking(move || client.store(store)).await {
            Ok(info) => cluster.directory.update(info.meta.as_ref()),
            Err(e) => {
                return Err(Reply::error(format!(
                    "ERR store {store} is not known to the cluster: {e}"
                )))
            }
        }
    }
    Ok(())
}

/// Adds `peer` as a learner of region `desc` (led here) and waits for the change to apply.
pub(super) async fn add_learner(
    core: &Rc<Core>,
    cluster: &ClusterNode,
    desc: &RegionDescriptor,
    peer: PeerMeta,
) -> std::result::Result<(), Reply> {
    check_new_learner(cluster, desc, peer.store_id).await?;
    change(core, desc.id, PeerChange::AddLearner(peer)).await
}

/// Promotes the learner on `store` of region `desc` (led here) to a voter once it is at
/// most [`PROMOTE_MAX_LAG`] entries behind, and waits for the change to apply.
pub(super) async fn promote(
    core: &Rc<Core>,
    desc: &RegionDescriptor,
    store: u64,
) -> std::result::Result<(), Reply> {
    let region = desc.id;
    let Some(p) = desc.peer_on_store(store) else {
        return Err(Reply::error(format!(
            "ERR store {store} holds no replica of region {region}"
        )));
    };
    if p.role != PeerRole::Learner {
        return Err(Reply::error(format!(
            "ERR peer {} on store {store} is already a voter",
            p.peer_id
        )));
    }
    let progress = core.raft.borrow().progress(region, p.peer_id);
    match progress {
        Some((matched, last)) if last.saturating_sub(matched) <= PROMOTE_MAX_LAG => {}
        Some((matched, last)) => {
            return Err(Reply::error(format!(
                "ERR learner {} of region {region} lags: it has the log up to {matched}, the leader up to {last}; retry once it caught up",
                p.peer_id
            )))
        }
        None => {
            return Err(Reply::error(format!(
                "ERR no progress of learner {} is known yet; retry",
                p.peer_id
            )))
        }
    }
    let voter = PeerMeta::voter(store, p.peer_id);
    change(core, region, PeerChange::AddVoter(voter)).await
}

/// Removes the replica on `store` (not this store) from region `desc` (led here) and waits
/// for the change to apply.
pub(super) async fn remove_peer(
    core: &Rc<Core>,
    cluster: &ClusterNode,
    desc: &RegionDescriptor,
    store: u64,
) -> std::result::Result<(), Reply> {
    let region = desc.id;
    let Some(p) = desc.peer_on_store(store) else {
        return Err(Reply::error(format!(
            "ERR store {store} holds no replica of region {region}"
        )));
    };
    if store == cluster.store_id {
        return Err(Reply::error(format!(
            "ERR peer {} on store {store} leads region {region}: TRANSFERLEADER first",
            p.peer_id
        )));
    }
    change(core, region, PeerChange::Remove(p)).await
}

/// Hands the leadership of region `desc` (led here) to its voter on `store` and waits
/// (at most [`CHANGE_TIMEOUT`]) until that voter leads.
pub(super) async fn transfer_leader(
    core: &Rc<Core>,
    cluster: &ClusterNode,
    desc: &RegionDescriptor,
    store: u64,
) -> std::result::Result<(), Reply> {
    let region = desc.id;
    let Some(p) = desc.peer_on_store(store) else {
        return Err(Reply::error(format!(
            "ERR store {store} holds no replica of region {region}"
        )));
    };
    if p.role != PeerRole::Voter {
        return Err(Reply::error(format!(
            "ERR peer {} on store {store} is a learner",
            p.peer_id
        )));
    }
    if store == cluster.store_id {
        return Ok(());
    }
    if let Err(e) = core.raft.borrow_mut().transfer_leader(region, p.peer_id) {
        return Err(Reply::error(format!("ERR {e}")));
    }
    let _ = core.notify.try_send(());
    let deadline = Instant::now() + CHANGE_TIMEOUT;
    // Bounded by the deadline.
    while Instant::now() < deadline && !core.stop.is_fired() {
        let leader = core.raft.borrow().leader(region);
        if leader.is_some_and(|l| l.peer_id == p.peer_id) {
            return Ok(());
        }
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    Err(Reply::error(format!(
        "ERR leadership of region {region} did not move to store {store} in time"
    )))
}

/// One line per region of this core.
fn list_local(core: &Rc<Core>) -> Reply {
    let raft = core.raft.borrow();
    let lines = raft
        .regions()
        .map(|d| {
            let peers: Vec<String> = d
                .peers
                .iter()
                .map(|p| {
                    let role = match p.role {
                        PeerRole::Voter => "voter",
                        PeerRole::Learner => "learner",
                    };
                    format!("{}@{}:{role}", p.peer_id, p.store_id)
                })
                .collect();
            let leader = raft.leader(d.id).map_or(0, |p| p.store_id);
            let slots = layout::slot_range(d).map_or_else(|_| "-".to_string(), |(s, e)| format!("{s}..{e}"));
            Reply::Bulk(
                format!(
                    "region={} core={} slots={slots} leader_store={} applied={} version={} conf_version={} peers={}",
                    d.id,
                    core.id,
                    leader,
                    raft.applied(d.id).unwrap_or(0),
                    d.epoch.version,
                    d.epoch.conf_version,
                    peers.join(",")
                )
                .into_bytes(),
            )
        })
        .collect();
    Reply::Array(lines)
}

/// Proposes one membership change of `region` and waits for it to apply; then reports
/// the new membership to the coordinator.
async fn change(core: &Rc<Core>, region: u64, c: PeerChange) -> std::result::Result<(), Reply> {
    // A change proposed while the previous one (or a joint configuration's leave) is not
    // applied yet would be dropped by raft: wait for it first, within the change's bound.
    let deadline = Instant::now() + CHANGE_TIMEOUT;
    while core.raft.borrow().conf_change_pending(region) {
        if Instant::now() >= deadline {
            return Err(Reply::error(format!(
                "ERR region {region}: the previous membership change is still not applied, retry"
            )));
        }
        if !sleep_unless_stopped(core, CONF_PENDING_POLL).await {
            return Err(Reply::error(
                "ERR membership change abandoned: the core is stopping",
            ));
        }
    }
    let (tx, rx) = oneshot::channel();
    let proposed = core
        .raft
        .borrow_mut()
        .propose_conf_change(region, &[c], Waiter::Conf(tx));
    if let Err((e, _)) = proposed {
        return Err(match e {
            nokv_raft::Error::NotLeader { .. } => moved(core, region, None),
            e => Reply::error(format!("ERR {e}")),
        });
    }
    let _ = core.notify.try_send(());
    let answered = future::or(rx, async {
        glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
        None
    })
    .await;
    match answered {
        Some(Ok(desc)) => {
            tracing::info!(region, change = ?c, conf_version = desc.epoch.conf_version, "membership changed");
            report_leaders(core);
            Ok(())
        }
        Some(Err(reply)) => Err(reply),
        None => Err(Reply::error(format!(
            "ERR membership change of region {region} not applied in time (it may still apply)"
        ))),
    }
}

/// A store received raft messages for `region` (from `from_store`, to its peer
/// `to_peer`, at `epoch`) and holds no replica: looks the region up in the coordinator's
/// routes (refreshed by the heartbeat thread) and creates an empty replica when the coordinator's descriptor lists this store with
/// that peer id and the sender as a member, at the same split version. Never twice at
/// once for one region; for a replica removed from this store only once its data is
/// deleted and for a newer membership (the store was added again).
pub(super) fn maybe_create(
    core: &Rc<Core>,
    region: u64,
    to_peer: u64,
    from_store: u64,
    epoch: nokv_raft::Epoch,
) {
    let Some(cluster) = &core.node.cluster else {
        return;
    };
    if buried(core, region, epoch.conf_version) || !core.creating.borrow_mut().insert(region) {
        return;
    }
    let store_id = cluster.store_id;
    let known = cluster.directory.region(region);
    let c = core.clone();
    glommio::spawn_local(async move {
        let created = match known {
            Some((desc, _)) => create(&c, store_id, desc, to_peer, from_store, epoch).await,
            None => Err(ReplicaError::Refused {
                region,
                reason: "the coordinator's routes (refreshed every few seconds) do not have it yet"
                    .into(),
            }),
        };
        if let Err(e) = created {
            tracing::debug!(error = %e, "no replica created for incoming raft messages");
            glommio::timer::sleep(CREATE_RETRY).await;
        }
        c.creating.borrow_mut().remove(&region);
    })
    .detach();
}

async fn create(
    core: &Rc<Core>,
    store_id: u64,
    desc: RegionDescriptor,
    to_peer: u64,
    from_store: u64,
    epoch: nokv_raft::Epoch,
) -> std::result::Result<(), ReplicaError> {
    let region = desc.id;
    let conf_version = desc.epoch.conf_version;
    let refused = |reason: String| ReplicaError::Refused { region, reason };
    match desc.peer_on_store(store_id) {
        Some(p) if p.peer_id == to_peer => {}
        _ => {
            return Err(refused(format!(
                "the coordinator lists no peer {to_peer} on this store"
            )))
        }
    }
    if desc.peer_on_store(from_store).is_none() {
        return Err(refused(format!(
            "the sender's store {from_store} is not a member"
        )));
    }
    if epoch.version != desc.epoch.version {
        return Err(refused(format!(
            "split version differs (message {}, coordinator {})",
            epoch.version, desc.epoch.version
        )));
    }
    if local_core(&core.node, region).is_some_and(|c| c != core.id)
        || core.raft.borrow().region(region).is_some()
    {
        return Err(refused("the region is already held here".into()));
    }
    // A region made by a split that this store has not applied yet: its parent's replica
    // here still covers the range, and applying the split will create it.
    if let Ok((s, e)) = layout::slot_range(&desc) {
        let raft = core.raft.borrow();
        let overlaps = |(ls, le): (u32, u32)| ls < e && s < le;
        let held = core.routes().all().iter().any(|r| {
            r.region != region && r.core != layout::NOT_HERE && overlaps((r.start_slot, r.end_slot))
        }) || raft
            .regions()
            .any(|r| r.id != region && layout::slot_range(r).is_ok_and(overlaps));
        if held {
            return Err(refused(
                "a replica on this store still covers part of its range (a split not applied here yet)"
                    .into(),
            ));
        }
    }
    // The peer re-applies every membership change of the log from index 1 (each bumps
    // the version): it starts from the version regions are born with, so that it ends
    // where the other replicas are.
    let mut desc = desc;
    desc.epoch.conf_version = INITIAL_CONF_VERSION;
    let db = core.db.clone();
    let saved = desc.clone();
    blocking(move || nokv_raft::region::save_region(&db, &saved))
        .await
        .map_err(|source| ReplicaError::Raft { region, source })?;
    if buried(core, region, conf_version) || core.raft.borrow().region(region).is_some() {
        return Err(refused("the region changed meanwhile".into()));
    }
    // Added again after a removal: the old replica is gone.
    core.tombstones.borrow_mut().remove(&region);
    if let Ok(mut m) = core.node.moved_out.write() {
        m.remove(&region);
    }
    core.raft
        .borrow_mut()
        .start_region(desc.clone())
        .map_err(|source| ReplicaError::Raft { region, source })?;
    core.node.set_hosted(region, Some(core.id));
    glommio::spawn_local(report_core(core.clone(), region, to_peer)).detach();
    tracing::info!(
        region,
        peer = to_peer,
        core = core.id,
        conf_version = desc.epoch.conf_version,
        "created a replica added to this store"
    );
    let _ = core.notify.try_send(());
    Ok(())
}

/// Tells the coordinator which core holds the replica `peer` of `region` created here
/// (a restart places it where the coordinator says), through the heartbeat thread with
/// the coordinator's own descriptor; repeated until the routes show it (bounded).
pub(super) async fn report_core(core: Rc<Core>, region: u64, peer: u64) {
    let Some(cluster) = &core.node.cluster else {
        return;
    };
    for _ in 0..20 {
        if cluster.directory.peer_core(peer) == Some(core.id as u32)
            || core.raft.borrow().region(region).is_none()
        {
            return;
        }
        if let Some((desc, leader)) = cluster.directory.region(region) {
            let leader_peer_id = leader
                .and_then(|s| desc.peer_on_store(s))
                .map_or(0, |p| p.peer_id);
            if desc.peer(peer).is_some() && leader_peer_id != 0 {
                let _ = cluster.reports.try_send(crate::cluster::RegionReport {
                    desc,
                    leader_peer_id,
                    core: core.id as u32,
                    core_peer: Some(peer),
                    size_bytes: None,
                    requests_per_sec: 0,
                });
            }
        }
        let slept = future::or(
            async {
                glommio::timer::sleep(crate::cluster::REGION_REPORT_INTERVAL).await;
                true
            },
            async {
                core.stop.wait().await;
                false
            },
        )
        .await;
        if !slept {
            return;
        }
    }
    tracing::warn!(
        region,
        peer,
        core = core.id,
        "the coordinator did not record this replica's core"
    );
}

/// After a round: forgets every region whose membership no longer lists this store (its
/// removal applied here), and deletes its descriptor and data (on the blocking pool).
pub(super) fn reap_removed(core: &Rc<Core>) {
    let Some(cluster) = &core.node.cluster else {
        return;
    };
    let removed: Vec<u64> = {
        let raft = core.raft.borrow();
        raft.regions()
            .filter(|d| d.peer_on_store(cluster.store_id).is_none())
            .map(|d| d.id)
            .collect()
    };
    for region in removed {
        remove_local(core, region, None);
    }
}

/// Forgets the local replica of `region` (removed from this store): its waiters are
/// answered, it is never recreated from raft messages, its descriptor and data are
/// deleted on the blocking pool.
fn remove_local(core: &Rc<Core>, region: u64, leader_hint: Option<u64>) {
    let leader = leader_hint.or_else(|| core.raft.borrow().leader(region).map(|p| p.store_id));
    if let (Some(l), Ok(mut m)) = (leader, core.node.moved_out.write()) {
        m.insert(region, l);
    }
    let desc = core.raft.borrow_mut().remove_region(region, |t| {
        t.answer(Reply::error(format!(
            "ERR region {region} was removed from this store"
        )))
    });
    let Some(desc) = desc else { return };
    let conf_version = desc.epoch.conf_version;
    core.tombstones
        .borrow_mut()
        .insert(region, (conf_version, false));
    core.node.set_hosted(region, None);
    tracing::info!(
        region,
        conf_version = desc.epoch.conf_version,
        "replica removed from this store; deleting its data"
    );
    let db = core.db.clone();
    let c = core.clone();
    glommio::spawn_local(async move {
        let deleted = blocking(move || delete_region_data(&db, &desc)).await;
        match deleted {
            Ok(()) => {
                if let Some(t) = c.tombstones.borrow_mut().get_mut(&region) {
                    if t.0 == conf_version {
                        t.1 = true;
                    }
                }
            }
            Err(e) => {
                tracing::error!(region, error = %e, "deleting a removed replica's data failed")
            }
        }
    })
    .detach();
}

/// Whether a replica of `region` removed from this core bars creating one for membership
/// version `conf_version`: its data is not deleted yet, or the version is not newer than
/// the one it was removed at (a message from before the removal).
fn buried(core: &Core, region: u64, conf_version: u64) -> bool {
    core.tombstones
        .borrow()
        .get(&region)
        .is_some_and(|&(removed_at, deleted)| !deleted || conf_version <= removed_at)
}

/// How often a core compares its replicas with the coordinator's routes.
pub const REMOVED_CHECK_INTERVAL: Duration = Duration::from_secs(3);

/// A replica removed from its region may never apply its own removal (the leader stops
/// sending to it once the change applied there): every [`REMOVED_CHECK_INTERVAL`] the
/// core compares its replicas with the coordinator's routes (which the heartbeat thread
/// refreshes into the directory) and removes each local replica of a region whose newer
/// membership (a higher conf version, reported by its leader) no longer lists this store.
pub(super) async fn gc_removed(core: Rc<Core>) {
    let Some(cluster) = &core.node.cluster else {
        return;
    };
    while sleep_unless_stopped(&core, REMOVED_CHECK_INTERVAL).await {
        let stale: Vec<(u64, Option<u64>)> = {
            let raft = core.raft.borrow();
            raft.regions()
                .filter(|local| !raft.is_leader(local.id))
                .filter_map(|local| {
                    let (d, leader) = cluster.directory.region(local.id)?;
                    (d.epoch.conf_version > local.epoch.conf_version
                        && d.peer_on_store(cluster.store_id).is_none())
                    .then_some((local.id, leader))
                })
                .collect()
        };
        for (region, leader) in stale {
            tracing::info!(
                region,
                "the coordinator's newer membership no longer lists this store"
            );
            remove_local(&core, region, leader);
        }
    }
}

/// Deletes a removed replica's descriptor and every key of its data (all column families).
pub(super) fn delete_region_data(
    db: &Db,
    desc: &RegionDescriptor,
) -> std::result::Result<(), ReplicaError> {
    let region = desc.id;
    nokv_raft::region::delete_region(db, region)
        .map_err(|source| ReplicaError::Raft { region, source })?;
    let mut b = nokv::WriteBatch::new();
    for range in layout::region_data(desc) {
        // Keys are never empty: "\0" is the smallest start.
        let start: &[u8] = if range.range.start.is_empty() {
            b"\0"
        } else {
            &range.range.start
        };
        for &cf in range.cfs {
            let space = nokv::KeySpace {
                ns: range.range.ns,
                cf,
            };
            b.delete_range_in(space, start, range.range.end.as_deref());
        }
    }
    db.write(&b, &nokv::WriteOptions::default())
        .map_err(|source| ReplicaError::Engine { region, source })
}

/// Hashes the checks a round applied (on the blocking pool) and records them.
pub(super) fn hash_checks(core: &Rc<Core>, checks: Vec<PendingHash>) {
    for pending in checks {
        let c = core.clone();
        glommio::spawn_local(async move {
            let db = c.db.clone();
            let (region, index) = (pending.desc.id, pending.index);
            let hashed = blocking(move || consistency::hash_region(&db, &pending)).await;
            match hashed {
                Ok(mut h) => {
                    if c.node
                        .knobs
                        .corrupt_check_hash_while
                        .as_ref()
                        .is_some_and(|p| p.exists())
                    {
                        // Negative control (debug knob): this replica disagrees.
                        h ^= 1;
                    }
                    tracing::debug!(region, index, hash = h, "consistency check hashed");
                    c.node.checks.record(region, index, h);
                }
                Err(e) => {
                    tracing::warn!(region, index, error = %e, "consistency check hash failed")
                }
            }
        })
        .detach();
    }
}

/// Runs one consistency check of `region` led here: proposes the check entry, waits for
/// its own hash, collects the other replicas' and compares. The reply is the verdict.
pub(super) async fn run_check(core: &Rc<Core>, region: u64) -> Reply {
    let Some(cluster) = &core.node.cluster else {
        return Reply::error("ERR consistency checks need a store of a cluster");
    };
    let (tx, rx) = oneshot::channel();
    let proposed =
        core.raft
            .borrow_mut()
            .propose(region, consistency::encode_check(), Waiter::Write(tx));
    if let Err((e, _)) = proposed {
        return match e {
            nokv_raft::Error::NotLeader { .. } => moved(core, region, None),
            nokv_raft::Error::Busy { .. } => Reply::error(BUSY),
            e => Reply::error(format!("ERR {e}")),
        };
    }
    let _ = core.notify.try_send(());
    let index = match rx.await {
        Some(Reply::Int(i)) => i as u64,
        Some(other) => return other,
        None => return Reply::error("ERR check abandoned: the core is stopping"),
    };
    let deadline = Instant::now() + consistency::COLLECT_TIMEOUT;
    let own = loop {
        if let Some(h) = core.node.checks.hash_at(region, index) {
            break h;
        }
        if Instant::now() >= deadline || core.stop.is_fired() {
            return Reply::error(format!(
                "ERR region {region}: own hash of check {index} not ready in time"
            ));
        }
        glommio::timer::sleep(Duration::from_millis(20)).await;
    };
    let peers: Vec<PeerMeta> = core
        .raft
        .borrow()
        .region(region)
        .map(|d| d.peers.clone())
        .unwrap_or_default();
    let mut mismatched = Vec::new();
    let mut missing = Vec::new();
    let mut agreeing = vec![cluster.store_id];
    for p in peers.iter().filter(|p| p.store_id != cluster.store_id) {
        let Some(addr) = cluster.directory.redis_addr(p.store_id) else {
            missing.push(format!("store {}: no address", p.store_id));
            continue;
        };
        let got = loop {
            let a = addr.clone();
            let auth = cluster.auth.clone();
            let tls = cluster.tls.clone();
            let q = blocking(move || {
                consistency::query_hash(&a, auth.as_deref(), tls.as_deref(), region, index)
            })
            .await;
            match q {
                Ok(Some(h)) => break Ok(h),
                Ok(None) => {}
                Err(e) if Instant::now() >= deadline => break Err(e.to_string()),
                Err(_) => {}
            }
            if Instant::now() >= deadline || core.stop.is_fired() {
                break Err("not hashed in time".to_string());
            }
            glommio::timer::sleep(Duration::from_millis(100)).await;
        };
        match got {
            Ok(h) if h == own => agreeing.push(p.store_id),
            Ok(h) => {
                tracing::error!(region, index, leader_store = cluster.store_id, leader_hash = %format!("{own:016x}"), store = p.store_id, hash = %format!("{h:016x}"), "consistency check MISMATCH");
                mismatched.push(format!("store {} hash {h:016x}", p.store_id));
            }
            Err(why) => missing.push(format!("store {}: {why}", p.store_id)),
        }
    }
    metrics::counter!(consistency::CHECKS_TOTAL).increment(1);
    let verdict = if !mismatched.is_empty() {
        metrics::counter!(consistency::MISMATCH_TOTAL).increment(1);
        metrics::gauge!(consistency::LAST_OK).set(0.0);
        format!(
            "MISMATCH region={region} index={index} leader_store={} hash={own:016x} differing: {}",
            cluster.store_id,
            mismatched.join("; ")
        )
    } else if !missing.is_empty() {
        format!(
            "INCOMPLETE region={region} index={index} hash={own:016x} agreeing_stores={agreeing:?} missing: {}",
            missing.join("; ")
        )
    } else {
        metrics::gauge!(consistency::LAST_OK).set(1.0);
        format!("MATCH region={region} index={index} hash={own:016x} stores={agreeing:?}")
    };
    tracing::info!(region, verdict, "consistency check");
    core.node.checks.set_verdict(region, verdict.clone());
    Reply::Simple(verdict)
}

/// Sleeps `d`; false (at once) when the core stops meanwhile.
pub(super) async fn sleep_unless_stopped(core: &Core, d: Duration) -> bool {
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

/// Checks every region this core leads, every `interval`, until the core stops.
pub(super) async fn periodic_checks(core: Rc<Core>, interval: Duration) {
    while sleep_unless_stopped(&core, interval).await {
        let led: Vec<u64> = {
            let raft = core.raft.borrow();
            raft.regions()
                .filter(|r| raft.is_leader(r.id))
                .map(|r| r.id)
                .collect()
        };
        for region in led {
            if core.stop.is_fired() {
                return;
            }
            let _ = run_check(&core, region).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<Vec<u8>> {
        line.split(' ').map(|a| a.as_bytes().to_vec()).collect()
    }

    #[test]
    fn region_subcommands_parse_with_their_arguments() {
        let ok = |line: &str| parse_region_op(&args(line)).map(|(r, op)| (r, format!("{op:?}")));
        assert_eq!(
            ok("NOKV.REGION addlearner 7 4"),
            Ok((7, "AddLearner(4)".into()))
        );
        assert_eq!(ok("NOKV.REGION PROMOTE 7 4"), Ok((7, "Promote(4)".into())));
        assert_eq!(
            ok("NOKV.REGION REMOVEPEER 7 2"),
            Ok((7, "RemovePeer(2)".into()))
        );
        assert_eq!(
            ok("NOKV.REGION TRANSFERLEADER 7 3"),
            Ok((7, "TransferLeader(3)".into()))
        );
        assert_eq!(ok("NOKV.REGION CHECK 7"), Ok((7, "Check".into())));
        assert_eq!(ok("NOKV.REGION HASH 7 12"), Ok((7, "Hash(12)".into())));
        assert_eq!(ok("NOKV.REGION LOCALCOUNT 7"), Ok((7, "LocalCount".into())));
        let err = |line: &str| match parse_region_op(&args(line)) {
            Err(Reply::Error(e)) => e,
            other => panic!("{line}: {other:?}"),
        };
        assert!(err("NOKV.REGION CHECK 7 8").contains("wrong number of arguments"));
        assert!(err("NOKV.REGION PROMOTE 7").contains("wrong number of arguments"));
        assert!(err("NOKV.REGION PROMOTE x 4").contains("region must be"));
        assert!(err("NOKV.REGION PROMOTE 7 -1").contains("store must be"));
        assert!(err("NOKV.REGION UNSPLIT 7").starts_with("ERR usage"));
        assert!(err("NOKV.REGION MERGE 7").contains("wrong number of arguments"));
        assert_eq!(ok("NOKV.REGION merge 7 8"), Ok((7, "Merge(8)".into())));
        assert!(err("NOKV.REGION MERGE 7 x").contains("neighbour region must be"));
        assert_eq!(ok("NOKV.REGION SPLIT 7"), Ok((7, "Split(None)".into())));
        assert_eq!(
            ok("NOKV.REGION split 7 100"),
            Ok((7, "Split(Some(100))".into()))
        );
        assert!(err("NOKV.REGION SPLIT").contains("wrong number of arguments"));
        assert!(err("NOKV.REGION SPLIT 7 1 2").contains("wrong number of arguments"));
        assert!(err("NOKV.REGION SPLIT 7 16384").contains("not a hash slot"));
        assert!(err("NOKV.REGION SPLIT x").contains("region must be"));
    }
}

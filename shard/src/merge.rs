//! Region merges on a store (docs/regions.md): `NOKV.REGION MERGE`, and the route
//! table's update once a merge applied.
//!
//! Two adjacent regions of one core become one: the raft side (`nokv_raft::merge`) stops
//! the source at a prepare entry, then the target takes its range over at a commit entry
//! (the data does not move). The region that survives is the one whose log is further
//! ahead, so the target's log needs little padding to stay past the source's versions.
//!
//! A child module of `node` (it works on the core's private state).

use super::*;

/// Longest each step of a merge is waited for once proposed.
const MERGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How a merge step refused at its apply is answered (`NodeOutbox::merge_done`).
pub(super) const REFUSED: &str = "ERR merge refused";
/// Merges applied by this store's cores.
const MERGES: &str = "nokv_region_merges_total";

/// Declares the merge metrics.
pub(super) fn register_metrics() {
    metrics::describe_counter!(MERGES, "Region merges applied by this store's cores");
}

/// Exports the merge counter of `core` from the start (at 0).
pub(super) fn zero_metrics(core: usize) {
    metrics::counter!(MERGES, "core" => core.to_string()).increment(0);
}

/// Merges regions `a` and `b` of this core (adjacent, both led here); returns the id of
/// the region that holds both ranges now; the reply to give otherwise.
pub(super) async fn merge(core: &Rc<Core>, a: u64, b: u64) -> std::result::Result<u64, Reply> {
    if a == b {
        return Err(Reply::error("ERR a region cannot merge with itself"));
    }
    let da = admin::led_region(core, a)?;
    let db = match admin::led_region(core, b) {
        Ok(d) => d,
        Err(reply) => {
            return Err(match admin::local_core(&core.node, b) {
                Some(c) if c != core.id => Reply::error(format!(
                    "ERR region {b} is on core {c}, region {a} on core {}: move one first (NOKV.REGION MOVE)",
                    core.id
                )),
                _ => reply,
            })
        }
    };
    nokv_raft::merge::check_mergeable(&da, &db)
        .map_err(|e| Reply::error(format!("ERR merge refused: {e}")))?;
    if let Some(cluster) = &core.node.cluster {
        check_same_cores(cluster, &da, &db)?;
    }
    // A merge of the two that an earlier call left prepared (its commit not applied in
    // time) is finished; else the region further ahead survives (its log needs the least
    // padding).
    let resumed = {
        let raft = core.raft.borrow();
        [(a, b), (b, a)]
            .into_iter()
            .find(|&(s, t)| raft.merge_state(s).is_some_and(|m| m.target == t))
    };
    let (target, source) = match resumed {
        Some((source, target)) => (target, source),
        None => {
            let raft = core.raft.borrow();
            let applied = |r: u64| raft.applied(r).unwrap_or(0);
            if applied(a) >= applied(b) {
                (a, b)
            } else {
                (b, a)
            }
        }
    };
    if !core.merges_running.borrow_mut().insert(source) {
        return Err(Reply::error(format!(
            "ERR a merge of region {source} into {target} is running; retry"
        )));
    }
    let _running = Running(core, source);
    if resumed.is_none() {
        let (tx, rx) = oneshot::channel();
        let prepared =
            core.raft
                .borrow_mut()
                .propose_prepare_merge(source, target, Waiter::Conf(tx));
        if let Err((e, _)) = prepared {
            return Err(Reply::error(format!("ERR merge refused: {e}")));
        }
        await_step(core, rx, source, "prepare").await?;
        if core.node.knobs.merge_stop_after_prepare {
            return Err(Reply::error(format!(
                "ERR debug knob: the merge of region {source} into {target} stopped after its prepare"
            )));
        }
    }
    // The commit is taken once every replica of the source holds the prepare in its log
    // (standalone: at once; a Paused answer means a round is still applying it, or a
    // follower still receiving it).
    let deadline = Instant::now() + MERGE_TIMEOUT;
    let rx = loop {
        let (tx, rx) = oneshot::channel();
        let committed =
            core.raft
                .borrow_mut()
                .propose_commit_merge(target, source, Waiter::Conf(tx));
        match committed {
            Ok(_) => break rx,
            Err((nokv_raft::Error::Paused { .. }, _)) if Instant::now() < deadline => {
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            // The target is busy with an earlier step (a commit of this merge that an
            // earlier call proposed may still apply): no rollback.
            Err((e @ nokv_raft::Error::Paused { region }, _)) if region == target => {
                return Err(Reply::error(format!(
                    "ERR merge of region {source} into {target} not committed: {e}; run it again"
                )));
            }
            // Nothing was proposed to the target: the source may take writes again.
            Err((e, _)) => {
                rollback(core, source).await;
                return Err(Reply::error(format!("ERR merge refused: {e}")));
            }
        }
    };
    match await_step(core, rx, target, "commit").await {
        Ok(()) => Ok(target),
        // Refused at its apply (the target's epoch moved), the same on every replica: it
        // can never apply, so the source takes writes again. A commit not applied in time
        // or abandoned (a lost leadership) may still apply: a rollback then would leave
        // the target's replicas waiting for a prepared source forever, so the source stays
        // prepared until the merge is run again.
        Err(Reply::Error(e)) if e.starts_with(REFUSED) => {
            if core.raft.borrow().region(source).is_some() {
                rollback(core, source).await;
            }
            Err(Reply::Error(e))
        }
        Err(Reply::Error(e)) => Err(Reply::error(format!(
            "{e} (region {source} takes no writes until NOKV.REGION MERGE {a} {b} is run again)"
        ))),
        Err(other) => Err(other),
    }
}

/// Marks a merge source driven by a call of [`merge`] until dropped.
struct Running<'a>(&'a Rc<Core>, u64);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.merges_running.borrow_mut().remove(&self.1);
    }
}

/// In a cluster: refuses unless, on every other store, the replicas of `a` and `b` are on
/// one core as the coordinator records them (a replica applies the commit only once its
/// own source replica, on the target's core, applied the prepare; replicas of a cluster
/// never change core, so the record cannot go stale).
fn check_same_cores(
    cluster: &ClusterNode,
    a: &RegionDescriptor,
    b: &RegionDescriptor,
) -> std::result::Result<(), Reply> {
    for pa in a.peers.iter().filter(|p| p.store_id != cluster.store_id) {
        // check_mergeable found the same stores in both.
        let Some(pb) = b.peers.iter().find(|p| p.store_id == pa.store_id) else {
            continue;
        };
        let (ca, cb) = (
            cluster.directory.peer_core(pa.peer_id),
            cluster.directory.peer_core(pb.peer_id),
        );
        match (ca, cb) {
            (Some(ca), Some(cb)) if ca == cb => {}
            (Some(ca), Some(cb)) => {
                return Err(Reply::error(format!(
                    "ERR merge refused: on store {}, region {} is on core {ca} and region {} on core {cb}",
                    pa.store_id, a.id, b.id
                )))
            }
            _ => {
                return Err(Reply::error(format!(
                    "ERR merge refused: the coordinator has not recorded the cores of regions {} and {} on store {} yet; retry",
                    a.id, b.id, pa.store_id
                )))
            }
        }
    }
    Ok(())
}

/// Waits for a proposed merge step of `region` (bounded by [`MERGE_TIMEOUT`]).
async fn await_step(
    core: &Rc<Core>,
    rx: oneshot::Receiver<std::result::Result<RegionDescriptor, Reply>>,
    region: u64,
    step: &str,
) -> std::result::Result<(), Reply> {
    let _ = core.notify.try_send(());
    let answered = future::or(rx, async {
        glommio::timer::sleep(MERGE_TIMEOUT).await;
        None
    })
    .await;
    match answered {
        Some(Ok(_)) => Ok(()),
        Some(Err(reply)) => Err(reply),
        None => Err(Reply::error(format!(
            "ERR merge {step} of region {region} not applied in time (it may still apply)"
        ))),
    }
}

/// Undoes `source`'s prepared merge (its target could not take it over).
async fn rollback(core: &Rc<Core>, source: u64) {
    let (tx, rx) = oneshot::channel();
    let proposed = core
        .raft
        .borrow_mut()
        .propose_rollback_merge(source, Waiter::Conf(tx));
    let result = match proposed {
        Ok(_) => await_step(core, rx, source, "rollback").await,
        Err((e, _)) => Err(Reply::error(format!("ERR {e}"))),
    };
    if let Err(e) = result {
        tracing::error!(core = core.id, region = source, error = ?e, "merge rollback failed: the region takes no writes until it is merged or rolled back");
    }
}

/// Routes the slots of merged-away sources to their targets, after the round applied.
pub(super) fn applied(core: &Rc<Core>, merges: Vec<(RegionDescriptor, u64)>) {
    if merges.is_empty() {
        return;
    }
    for (target, source) in &merges {
        metrics::counter!(MERGES, "core" => core.id.to_string()).increment(1);
        if core.node.knobs.merge_delete_source_early {
            // Negative control (debug knob): the crash test must find the gap.
            let (db, source) = (core.db.clone(), *source);
            glommio::spawn_local(async move {
                let deleted = blocking(move || nokv_raft::region::delete_region(&db, source)).await;
                tracing::warn!(
                    source,
                    ?deleted,
                    "debug knob: merged-away descriptor deleted early"
                );
            })
            .detach();
        }
        match core.node.routes.update(|t| t.with_merge(target, *source)) {
            Ok(()) => tracing::info!(
                core = core.id,
                target = target.id,
                source,
                "regions merged: routes updated"
            ),
            // Cannot happen: the raft side checked adjacency against the same descriptors.
            // The source's keys then find no region here (-TRYAGAIN), nothing is written.
            Err(e) => {
                tracing::error!(core = core.id, target = target.id, source, error = %e, "routes not updated after a merge")
            }
        }
    }
    report_leaders(core);
}

/// At each split check: merges one pair of adjacent regions this core
/// leads whose data together is below `--merge-max-bytes` (and half `--region-max-bytes`)
/// and that each served fewer than `--merge-max-qps` requests per second over the last
/// interval, while the core holds more than its first `REGIONS_PER_CORE` regions (so the
/// load of a store that becomes busy again has regions to spread over). Returns whether
/// it merged.
pub(super) async fn merge_cold(core: &Rc<Core>, loads: &HashMap<u64, load::LoadFigures>) -> bool {
    let node = &core.node;
    // A merge an earlier call left prepared (its commit not applied in time) is finished
    // first: its source takes no writes until then.
    let stuck = {
        let raft = core.raft.borrow();
        let found = raft
            .regions()
            .filter(|r| raft.is_leader(r.id))
            .find_map(|r| {
                raft.merge_state(r.id)
                    .filter(|m| raft.is_leader(m.target))
                    .map(|m| (r.id, m.target))
            })
            .filter(|(source, _)| !core.merges_running.borrow().contains(source));
        found
    };
    if let Some((source, target)) = stuck {
        let finished = merge(core, source, target).await;
        tracing::info!(source, target, result = ?finished, "finishing a prepared merge");
        return finished.is_ok();
    }
    let mut led: Vec<RegionDescriptor> = {
        let raft = core.raft.borrow();
        raft.regions()
            .filter(|r| raft.is_leader(r.id) && raft.merge_state(r.id).is_none())
            .cloned()
            .collect()
    };
    if led.len() <= REGIONS_PER_CORE {
        return false;
    }
    led.sort_by(|a, b| a.start_key.cmp(&b.start_key));
    let cold = |id: u64| {
        loads
            .get(&id)
            .is_none_or(|f| f.ops_per_sec < node.merge_max_qps as f64)
    };
    let limit = match node.region_max_bytes {
        0 => node.merge_max_bytes,
        max => node.merge_max_bytes.min(max / 2),
    };
    for pair in led.windows(2) {
        let [a, b] = pair else { continue };
        if a.end_key != b.start_key || !cold(a.id) || !cold(b.id) {
            continue;
        }
        let (Ok((sa, ea)), Ok((sb, eb))) = (layout::slot_range(a), layout::slot_range(b)) else {
            continue;
        };
        let db = core.db.clone();
        let (da, dbb) = (a.clone(), b.clone());
        let size = blocking(move || {
            split::size_between(&db, &da, sa, ea) + split::size_between(&db, &dbb, sb, eb)
        })
        .await;
        if size >= limit {
            continue;
        }
        return match merge(core, a.id, b.id).await {
            Ok(survivor) => {
                tracing::info!(
                    core = core.id,
                    a = a.id,
                    b = b.id,
                    survivor,
                    size,
                    "merged two small, cold regions"
                );
                true
            }
            Err(reply) => {
                tracing::debug!(a = a.id, b = b.id, reply = ?reply, "merge of cold regions not done");
                false
            }
        };
    }
    false
}

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
    if core.node.cluster.is_some() {
        return Err(Reply::error(
            "ERR NOKV.REGION MERGE runs on standalone stores only (not yet in a cluster)",
        ));
    }
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
    // The region further ahead survives (its log needs the least padding).
    let (target, source) = {
        let raft = core.raft.borrow();
        let applied = |r: u64| raft.applied(r).unwrap_or(0);
        if applied(a) >= applied(b) {
            (a, b)
        } else {
            (b, a)
        }
    };
    let (tx, rx) = oneshot::channel();
    let prepared = core
        .raft
        .borrow_mut()
        .propose_prepare_merge(source, target, Waiter::Conf(tx));
    if let Err((e, _)) = prepared {
        return Err(Reply::error(format!("ERR merge refused: {e}")));
    }
    await_step(core, rx, source, "prepare").await?;
    // Standalone: the only replica applied the prepare with its round, so the commit is
    // taken at once (a Paused answer means a round is still applying it).
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
            Err((e, _)) => {
                rollback(core, source).await;
                return Err(Reply::error(format!("ERR merge refused: {e}")));
            }
        }
    };
    match await_step(core, rx, target, "commit").await {
        Ok(()) => Ok(target),
        Err(reply) => {
            if core.raft.borrow().region(source).is_some() {
                rollback(core, source).await;
            }
            Err(reply)
        }
    }
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

/// Standalone stores, at each split check: merges one pair of adjacent regions this core
/// leads whose data together is below `--merge-max-bytes` (and half `--region-max-bytes`)
/// and that each served fewer than `--merge-max-qps` requests per second over the last
/// interval, while the core holds more than its first `REGIONS_PER_CORE` regions (so the
/// load of a store that becomes busy again has regions to spread over). Returns whether
/// it merged.
pub(super) async fn merge_cold(core: &Rc<Core>, loads: &HashMap<u64, load::LoadFigures>) -> bool {
    let node = &core.node;
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

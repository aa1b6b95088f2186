//! Moving a region between the cores of a store (docs/regions.md, "Moving a region to
//! another core"): `NOKV.REGION MOVE <region> <core>`.
//!
//! The source core fences the region (new writes get `-TRYAGAIN`, nothing written), waits
//! until everything in its log is applied, exports its data at that index `I` (SST files,
//! as a raft snapshot), and hands the files to the target core, which applies them
//! crash-safely (`nokv_raft::ApplySnapshot`: marker, range delete, ingest, descriptor,
//! applied index and log floor `(I, term)` made durable by a flush) and starts the region's
//! peer with its log at `I`. Then the routes send the region's slots to the target and the
//! source forgets the region and deletes its copy. Reads go on throughout (the source
//! serves them until the routes switch).
//!
//! In a cluster the region's replica on this store moves the same way, led here: its
//! peer stops on the source core as soon as it is quiet (one peer id never runs on two
//! cores), the target starts it with the raft term and vote it had and campaigns at once,
//! as the target of a leadership transfer does (its log holds every committed entry), and
//! the coordinator learns its new core. Raft messages other stores still send to the old
//! core are handed on over the mesh.
//!
//! A crash between the target's durable copy and the source's deletion leaves the region
//! on both cores: [`resolve_duplicates`] keeps the copy with the newest log floor at the
//! next start (the fenced source took no write after `I`).
//!
//! A child module of `node` (it works on the core's private state).

use super::*;
use nokv_raft::{ApplySnapshot, SnapshotKey};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

/// Longest the source waits for the region's log to be applied.
const QUIET_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two looks at whether the region is quiet.
const QUIET_POLL: Duration = Duration::from_millis(5);
/// Moves done by this store's cores.
const MOVES: &str = "nokv_region_moves_total";

/// Exports core `core`'s move counter at 0 (dashboards and alerts find it).
pub(super) fn zero_metrics(core: usize) {
    metrics::counter!(MOVES, "core" => core.to_string()).increment(0);
}

/// Declares the move metric.
pub(super) fn register_metrics() {
    metrics::describe_counter!(
        MOVES,
        "Regions moved from this core to another core of the store"
    );
}

/// Moves `region`, led by this core, to core `to` of this store.
pub(super) async fn move_region(
    core: &Rc<Core>,
    region: u64,
    to: usize,
) -> std::result::Result<(), Reply> {
    if to >= core.node.cores || to == core.id {
        return Err(Reply::error(format!(
            "ERR core {to} is not another core of this store (cores 0..{}, the region is on {})",
            core.node.cores, core.id
        )));
    }
    let desc = admin::led_region(core, region)?;
    if core.raft.borrow().merge_state(region).is_some() {
        return Err(Reply::error(format!(
            "ERR region {region} is merging: it moves once the merge is done"
        )));
    }
    let clustered = core.node.cluster.is_some();
    core.raft.borrow_mut().fence(region, true);
    let _ = core.notify.try_send(());
    let unfence = |why: String| {
        core.raft.borrow_mut().fence(region, false);
        Reply::error(why)
    };
    let deadline = Instant::now() + QUIET_TIMEOUT;
    let (index, term) = loop {
        if let Some(at) = core.raft.borrow().quiet_at(region) {
            break at;
        }
        if Instant::now() >= deadline || !admin::sleep_unless_stopped(core, QUIET_POLL).await {
            return Err(unfence(format!(
                "ERR region {region}: its writes were not all applied within {QUIET_TIMEOUT:?}, nothing moved; retry"
            )));
        }
    };
    // A replica of a cluster stops here, in the same step as its quiet state was seen, so
    // that its log cannot change before the export (it would step other replicas'
    // messages): one peer id must never run on two cores. Its data and log stay on this
    // core's disk until the target holds the region durably, and no replica is created
    // here for the messages that still arrive meanwhile.
    let term_vote = if clustered {
        let tv = core.raft.borrow().term_and_vote(region);
        stop_peer(core, region, to);
        core.creating.borrow_mut().insert(region);
        tv
    } else {
        None
    };
    let back = Back {
        desc: &desc,
        index,
        term,
        term_vote,
        clustered,
    };
    // Pinned here, on the core's thread, where it matches the applied index.
    let engine = core.db.snapshot();
    let dir = core
        .db
        .path()
        .join("snap")
        .join(format!("move-r{region}-t{term}-i{index}"));
    let (db, d, x) = (core.db.clone(), desc.clone(), dir.clone());
    let exported = blocking(move || {
        nokv_raft::snapshot::export_ranges(&db, d.id, &engine, &x, &layout::region_data(&d))
    })
    .await;
    if let Err(e) = exported {
        return Err(give_back(core, &back, format!("ERR region {region}: export: {e}")).await);
    }
    let mut args = vec![
        b"NOKV.REGION".to_vec(),
        b"MOVEIN".to_vec(),
        region.to_string().into_bytes(),
        index.to_string().into_bytes(),
        term.to_string().into_bytes(),
        dir.to_string_lossy().into_owned().into_bytes(),
        desc.encode(),
    ];
    if let Some((current, vote)) = term_vote {
        args.push(current.to_string().into_bytes());
        args.push(vote.to_string().into_bytes());
    }
    // Boxed: the target's MOVEIN runs through the same admin path (a recursive future).
    let on_target: Pin<Box<dyn Future<Output = Answer> + '_>> =
        Box::pin(super::execute(core, to, Work::Admin { region, args }));
    match on_target.await {
        Answer::Reply(Reply::Simple(s)) if s == "OK" => {}
        Answer::Reply(other) => {
            // The target refused before its copy was durable: the source keeps the region.
            let why = match other {
                Reply::Error(e) => e,
                other => format!("{other:?}"),
            };
            return Err(not_taken(
                core,
                &back,
                format!("ERR region {region}: core {to} did not take it: {why}"),
            )
            .await);
        }
        _ => {
            return Err(not_taken(
                core,
                &back,
                format!("ERR region {region}: core {to} did not answer"),
            )
            .await)
        }
    }
    if core.node.knobs.abort_after_move_in {
        tracing::error!(
            region,
            "NOKV_DEBUG_ABORT_AFTER_MOVE_IN: aborting with the region on two cores"
        );
        std::process::abort();
    }
    // The target holds it durably and serves it: the source lets go.
    if !clustered {
        stop_peer(core, region, to);
    }
    let db = core.db.clone();
    // Descriptors this core's earlier applies wrote unlogged (the child of a split of
    // this very region, not flushed yet) become durable before the region's own
    // descriptor is deleted (synced): a crash would otherwise lose the child with the
    // memtable while the parent, whose log re-applies the split, is gone — a gap in the
    // slots (seen in CI: a SIGKILL while size splits and balancing moves ran).
    let old = desc.clone();
    let deleted = blocking(move || {
        db.flush().map_err(|e| e.to_string())?;
        admin::delete_region_data(&db, &old).map_err(|e| e.to_string())
    })
    .await;
    if let Err(e) = deleted {
        tracing::error!(region, error = %e, "deleting a moved region's old copy failed");
    }
    core.creating.borrow_mut().remove(&region);
    metrics::counter!(MOVES, "core" => core.id.to_string()).increment(1);
    tracing::info!(
        region,
        from = core.id,
        to,
        index,
        "region moved to another core"
    );
    Ok(())
}

/// What undoing a move needs.
struct Back<'a> {
    desc: &'a RegionDescriptor,
    index: u64,
    term: u64,
    term_vote: Option<(u64, u64)>,
    clustered: bool,
}

/// Undoes a move before anything was sent to the target, answering `why`: a standalone
/// region is unfenced; a cluster's replica starts again on this core (its engine data
/// flushed first, as its log then starts at the export's index).
async fn give_back(core: &Rc<Core>, back: &Back<'_>, why: String) -> Reply {
    let region = back.desc.id;
    if !back.clustered {
        core.raft.borrow_mut().fence(region, false);
        return Reply::error(why);
    }
    let db = core.db.clone();
    let restarted = blocking(move || db.flush().map_err(|e| e.to_string()))
        .await
        .and_then(|()| {
            core.raft
                .borrow_mut()
                .adopt_region(back.desc.clone(), back.index, back.term, back.term_vote)
                .map_err(|e| e.to_string())
        });
    core.creating.borrow_mut().remove(&region);
    match restarted {
        Ok(()) => {
            let _ = core.notify.try_send(());
        }
        Err(e) => {
            tracing::error!(region, error = %e, "a replica whose move failed did not start again here: restart the store")
        }
    }
    Reply::error(why)
}

/// The target did not confirm it took the region: a standalone region is unfenced (as
/// before). A cluster's replica is not started again here: the target may hold a durable
/// copy already (an ingest cut short finishes at the next start), and a restart keeps
/// that newer copy (`resolve_duplicates`), which would then miss what this one did since
/// (its votes, too). It stays stopped on both cores until the store restarts; the
/// region's other replicas keep it available.
async fn not_taken(core: &Rc<Core>, back: &Back<'_>, why: String) -> Reply {
    if !back.clustered {
        return give_back(core, back, why).await;
    }
    tracing::error!(
        region = back.desc.id,
        reason = %why,
        "a replica's move to another core was not confirmed: it stays stopped here; restart the store to settle it"
    );
    Reply::error(format!(
        "{why}; the replica stays stopped until the store restarts (its other replicas serve the region)"
    ))
}

/// Stops this core's peer of `region` (moving to core `to`): what waits on it gets
/// `-TRYAGAIN`, nothing of it was written.
fn stop_peer(core: &Rc<Core>, region: u64, to: usize) {
    core.raft.borrow_mut().remove_region(region, |t| {
        t.answer(Reply::error(format!(
            "TRYAGAIN region {region} moved to core {to}; nothing was written, retry"
        )))
    });
}

/// The target's side (`MOVEIN`, from the source core over the mesh): applies the export
/// durably, starts the region's peer at the export's index, routes its slots here. A
/// replica of a cluster keeps the raft term and vote it had and campaigns at once (it led
/// the region with its whole log committed).
pub(super) async fn move_in(core: &Rc<Core>, args: &[Vec<u8>]) -> Reply {
    let text = |i: usize| args.get(i).map(|a| String::from_utf8_lossy(a).into_owned());
    let num = |i: usize| text(i).and_then(|t| t.parse::<u64>().ok());
    let (Some(region), Some(index), Some(term), Some(dir), Some(desc)) =
        (num(2), num(3), num(4), text(5), args.get(6))
    else {
        return Reply::error("ERR internal: a malformed MOVEIN");
    };
    let term_vote = num(7).zip(num(8));
    let desc = match RegionDescriptor::decode(desc) {
        Ok(d) if d.id == region => d,
        Ok(_) => return Reply::error("ERR internal: MOVEIN names another region"),
        Err(e) => return Reply::error(format!("ERR internal: MOVEIN descriptor: {e}")),
    };
    if core.raft.borrow().region(region).is_some() {
        return Reply::error(format!(
            "ERR region {region} is already on core {}",
            core.id
        ));
    }
    let apply = ApplySnapshot::new(
        SnapshotKey {
            region,
            term,
            index,
        },
        desc.clone(),
        std::path::PathBuf::from(dir),
        layout::region_data,
    );
    let db = core.db.clone();
    let applied = blocking(move || {
        apply.run(&db)?;
        nokv_raft::snapshot::write_log_start(&db, region, index, term, term_vote)
    })
    .await;
    if let Err(e) = applied {
        return Reply::error(format!(
            "ERR region {region}: ingest on core {}: {e}",
            core.id
        ));
    }
    let peer = core
        .node
        .cluster
        .as_ref()
        .and_then(|c| desc.peer_on_store(c.store_id))
        .map(|p| p.peer_id);
    if let Err(e) = core
        .raft
        .borrow_mut()
        .adopt_region(desc, index, term, term_vote)
    {
        return Reply::error(format!(
            "ERR region {region}: start on core {}: {e}",
            core.id
        ));
    }
    let to = core.id;
    // A replica created here while running is found through the hosted map, the others
    // through the routes.
    if core.node.hosted_core(region).is_some() {
        core.node.set_hosted(region, Some(to));
    } else if let Err(e) = core.node.routes.update(|t| t.with_core(region, to)) {
        tracing::error!(region, error = %e, "routes not updated after a move");
    }
    if let Some(peer) = peer {
        if let Err(e) = core.raft.borrow_mut().campaign_as_transferee(region) {
            tracing::warn!(region, error = %e, "a moved replica did not campaign: an election will elect a leader");
        }
        glommio::spawn_local(admin::report_core(core.clone(), region, peer)).detach();
    }
    let _ = core.notify.try_send(());
    Reply::ok()
}

/// At start, before the cores run: a region found on several cores (a move a crash cut
/// short after the target's copy was durable) is kept where its log floor is newest; the
/// other copies (descriptor and data) are deleted.
pub(super) fn resolve_duplicates(opened: &mut [OpenedCore]) -> Result<()> {
    let mut cores_of: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (c, o) in opened.iter().enumerate() {
        for r in &o.regions {
            cores_of.entry(r.id).or_default().push(c);
        }
    }
    for (region, cores) in cores_of.into_iter().filter(|(_, c)| c.len() > 1) {
        let floor = |c: usize| {
            nokv_raft::snapshot::applied_snapshot(&opened[c].db, region)
                .map_err(|source| Error::Raft { core: c, source })
                .map(|f| f.map_or(0, |(i, _)| i))
        };
        let mut ranked = Vec::with_capacity(cores.len());
        for &c in &cores {
            ranked.push((floor(c)?, c));
        }
        ranked.sort();
        let Some(&(_, keep)) = ranked.last() else {
            continue;
        };
        for &(_, c) in &ranked[..ranked.len() - 1] {
            let o = &mut opened[c];
            let Some(desc) = o.regions.iter().find(|r| r.id == region).cloned() else {
                continue;
            };
            tracing::warn!(
                region,
                kept_on = keep,
                dropped_on = c,
                "a region on two cores after an interrupted move: keeping the newer copy"
            );
            admin::delete_region_data(&o.db, &desc).map_err(|e| {
                Error::Layout(format!(
                    "core {c}: delete the old copy of region {region}: {e}"
                ))
            })?;
            o.regions.retain(|r| r.id != region);
            o.recovered.drop_region(region);
        }
    }
    Ok(())
}

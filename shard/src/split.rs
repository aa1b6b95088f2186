//! Region splits on a store (docs/regions.md): `NOKV.REGION SPLIT`, the size check each
//! core runs over the regions it leads, the ids a split needs, and the route table's update
//! once a split applied.
//!
//! A split cuts a region of the Redis namespace at a hash slot: the parent keeps the slots
//! below it, the new region takes the rest, on the same core (the data does not move). The
//! raft side (`nokv_raft::split`) makes every replica apply it at the same log index.
//!
//! A child module of `node` (it works on the core's private state).

use super::*;
use nokv::KeySpace;

/// Longest a split is waited for once proposed.
const SPLIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Key of the highest id a standalone store handed out, in each core's meta space.
const ID_HIGH_WATER: &[u8] = b"ids/high-water";
/// Splits done by this store's cores.
const SPLITS: &str = "nokv_region_splits_total";
/// Each core's request rate over the last check interval.
const CORE_OPS: &str = "nokv_core_ops_per_second";
/// Bytes of data in the regions each core leads, as last measured.
const CORE_BYTES: &str = "nokv_core_data_bytes";
/// A core is rebalanced once its rate (or data size) exceeds the cores' mean by this factor.
const BALANCE_TOLERANCE: f64 = 1.25;
/// A core whose data size exceeds the cores' mean by less than this is left as it is
/// (small stores do not move regions for a few bytes).
const BALANCE_MIN_BYTES: u64 = 1 << 20;
/// Most regions one balancing check moves off a core.
const MAX_BALANCE_MOVES: usize = 8;
/// Regions past `--region-max-bytes` that hold one hash slot and cannot split.
const UNSPLITTABLE: &str = "nokv_region_unsplittable_total";

/// Declares the split metrics.
pub(super) fn register_metrics() {
    metrics::describe_counter!(SPLITS, "Region splits applied by this store's cores");
    metrics::describe_gauge!(CORE_OPS, "Requests per second the core served for the regions it leads, over its last split-check interval");
    metrics::describe_gauge!(
        CORE_BYTES,
        "Bytes of data in the regions the core leads, as its last split check measured them"
    );
    metrics::describe_counter!(
        UNSPLITTABLE,
        "Checks that found a region past --region-max-bytes (reason=size) or the load limits (reason=load) that cannot split: one hash slot holds it (a hot key range)"
    );
}

/// Ids of a standalone store (a cluster's come from the coordinator): one counter for
/// the store, its high-water mark persisted (synced) in the proposing core's engine before
/// an id is used, so a restart never hands one out twice.
pub(super) struct LocalIds {
    next: std::sync::atomic::AtomicU64,
}

impl LocalIds {
    /// Starts above every region and peer id the cores hold and every high-water mark.
    pub(super) fn new(opened: &[OpenedCore]) -> Result<LocalIds> {
        let mut top = 0u64;
        for (core, o) in opened.iter().enumerate() {
            for r in &o.regions {
                top = top.max(r.id);
                top = top.max(r.peers.iter().map(|p| p.peer_id).max().unwrap_or(0));
            }
            let hw =
                o.db.get_in(
                    nokv_raft::region::META_SPACE,
                    ID_HIGH_WATER,
                    &Default::default(),
                )
                .map_err(|e| {
                    Error::Layout(format!("core {core}: read the id high-water mark: {e}"))
                })?;
            if let Some(v) = hw.and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok()) {
                top = top.max(u64::from_be_bytes(v));
            }
        }
        Ok(LocalIds {
            next: std::sync::atomic::AtomicU64::new(top + 1),
        })
    }
}

/// `count` consecutive new ids (the first returned): from the coordinator in a cluster,
/// else from the store's counter, made durable first.
async fn alloc_ids(core: &Rc<Core>, count: u32) -> std::result::Result<u64, Reply> {
    if let Some(cluster) = &core.node.cluster {
        let client = cluster.client.clone();
        return blocking(move || client.alloc_ids(count))
            .await
            .map_err(|e| Reply::error(format!("ERR allocate ids from the coordinator: {e}")));
    }
    let first = core
        .node
        .ids
        .next
        .fetch_add(u64::from(count), Ordering::SeqCst);
    let high = first + u64::from(count) - 1;
    let db = core.db.clone();
    blocking(move || {
        let mut b = nokv::WriteBatch::new();
        b.put_in(
            nokv_raft::region::META_SPACE,
            ID_HIGH_WATER,
            &high.to_be_bytes(),
        );
        db.write(
            &b,
            &nokv::WriteOptions {
                durability: Some(nokv::Durability::Sync),
            },
        )
    })
    .await
    .map_err(|e| Reply::error(format!("ERR record the id high-water mark: {e}")))?;
    Ok(first)
}

/// Approximate bytes of `desc`'s data in `[start, end)` slots (SST files only).
pub(super) fn size_between(db: &Db, desc: &RegionDescriptor, start: u32, end: u32) -> u64 {
    let lo = layout::slot_key(start as u16);
    let hi = (end < u32::from(nokv_gateway::model::SLOTS)).then(|| layout::slot_key(end as u16));
    layout::region_data(desc)
        .iter()
        .flat_map(|r| r.cfs.iter().map(move |&cf| (r.range.ns, cf)))
        .map(|(ns, cf)| db.approximate_size(KeySpace::new(ns, cf), &lo, hi.as_deref()))
        .sum()
}

/// The region's size and the slot that halves its data (by binary search over the slots;
/// the middle slot when it holds nothing measurable). Reads table indexes: blocking pool.
fn measure(db: &Db, desc: &RegionDescriptor) -> Result<(u64, u16)> {
    let (start, end) = layout::slot_range(desc)?;
    let total = size_between(db, desc, start, end);
    let (mut lo, mut hi) = (start + 1, end - 1);
    if total == 0 || lo > hi {
        return Ok((total, ((start + end) / 2) as u16));
    }
    // The first slot s with size([start, s)) >= total / 2, kept inside (start, end).
    while lo < hi {
        let mid = (lo + hi) / 2;
        if size_between(db, desc, start, mid) * 2 >= total {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok((total, lo as u16))
}

/// Splits `region`, which this core leads, at `slot` (None: the slot that halves its data).
/// Returns the new region's id and the slot; the reply to give otherwise.
pub(super) async fn split(
    core: &Rc<Core>,
    region: u64,
    slot: Option<u16>,
) -> std::result::Result<(u64, u16), Reply> {
    let desc = admin::led_region(core, region)?;
    let (start, end) =
        layout::slot_range(&desc).map_err(|e| Reply::error(format!("ERR region {region}: {e}")))?;
    if end - start < 2 {
        return Err(Reply::error(format!(
            "ERR region {region} holds one hash slot ({start}) and cannot split"
        )));
    }
    let slot = match slot {
        Some(s) if (start + 1..end).contains(&u32::from(s)) => s,
        Some(s) => {
            return Err(Reply::error(format!(
                "ERR slot {s} is not strictly inside region {region}'s slots [{start}, {end})"
            )))
        }
        None => {
            let db = core.db.clone();
            let d = desc.clone();
            blocking(move || measure(&db, &d))
                .await
                .map_err(|e| Reply::error(format!("ERR region {region}: {e}")))?
                .1
        }
    };
    let first = alloc_ids(core, desc.peers.len() as u32 + 1).await?;
    let new_peers: Vec<(u64, u64)> = desc
        .peers
        .iter()
        .zip(first + 1..)
        .map(|(p, id)| (p.store_id, id))
        .collect();
    let (tx, rx) = oneshot::channel();
    let proposed = core.raft.borrow_mut().propose_split(
        region,
        layout::slot_key(slot),
        first,
        new_peers,
        Waiter::Conf(tx),
    );
    if let Err((e, _)) = proposed {
        return Err(match e {
            nokv_raft::Error::NotLeader { .. } => moved(core, region, None),
            e => Reply::error(format!("ERR split refused: {e}")),
        });
    }
    let _ = core.notify.try_send(());
    let answered = future::or(rx, async {
        glommio::timer::sleep(SPLIT_TIMEOUT).await;
        None
    })
    .await;
    match answered {
        Some(Ok(child)) => Ok((child.id, slot)),
        Some(Err(reply)) => Err(reply),
        None => Err(Reply::error(format!(
            "ERR split of region {region} not applied in time (it may still apply)"
        ))),
    }
}

/// After a round applied splits (their parents' entries are in the engine): routes send
/// the new regions' slots to them, and a leader reports both regions to the coordinator.
pub(super) fn applied(core: &Rc<Core>, splits: Vec<(RegionDescriptor, RegionDescriptor)>) {
    if splits.is_empty() {
        return;
    }
    for (parent, child) in &splits {
        metrics::counter!(SPLITS, "core" => core.id.to_string()).increment(1);
        let updated = core
            .node
            .routes
            .update(|t| t.with_split(parent.id, child, core.id));
        match updated {
            Ok(()) => tracing::info!(
                core = core.id,
                parent = parent.id,
                child = child.id,
                "region split: routes updated"
            ),
            // A route table that cannot take it (cannot happen: the raft side checked the
            // split against the same descriptor) would send the child's keys to the parent,
            // which refuses them (-TRYAGAIN) rather than write them.
            Err(e) => {
                tracing::error!(core = core.id, parent = parent.id, child = child.id, error = %e, "routes not updated after a split")
            }
        }
    }
    report_leaders(core);
}

/// Every `--split-check-ms`, until the core stops: splits the regions this core leads
/// whose data grew past `--region-max-bytes` (at the slot that halves it), or whose load
/// over the interval passed `--split-load-qps` or `--split-load-bytes` per second (at the
/// median slot of its sampled keys). A region of one hash slot cannot split: counted in
/// `nokv_region_unsplittable_total{reason}` and logged.
pub(super) async fn checks(core: Rc<Core>) {
    let node = core.node.clone();
    let label = core.id.to_string();
    // Exported from the start (at 0), so dashboards and alerts find them.
    metrics::counter!(SPLITS, "core" => label.clone()).increment(0);
    super::moves::zero_metrics(core.id);
    super::merge::zero_metrics(core.id);
    metrics::gauge!(CORE_OPS, "core" => label.clone()).set(0.0);
    metrics::gauge!(CORE_BYTES, "core" => label.clone()).set(0.0);
    for reason in ["size", "load"] {
        metrics::counter!(UNSPLITTABLE, "core" => label.clone(), "reason" => reason).increment(0);
    }
    let balance = node.balance_cores && node.cores > 1;
    let merges = node.merge_max_bytes > 0;
    // A cluster's coordinator balances data size: leaders report their regions' sizes.
    let measure_sizes = node.region_max_bytes > 0 || node.cluster.is_some();
    if !measure_sizes
        && node.split_load_qps == 0
        && node.split_load_bytes == 0
        && !balance
        && !merges
    {
        return;
    }
    // Intervals to wait after a move before balancing again (the moved load shows up in
    // the next window).
    let mut cooldown = 0u32;
    let unsplittable = |reason: &'static str| {
        metrics::counter!(UNSPLITTABLE, "core" => label.clone(), "reason" => reason).increment(1);
    };
    while admin::sleep_unless_stopped(&core, node.split_check).await {
        let loads = core.loads.roll();
        let mine: f64 = loads.values().map(|f| f.ops_per_sec).sum();
        node.core_ops[core.id].store(mine as u64, Ordering::Relaxed);
        metrics::gauge!(CORE_OPS, "core" => label.clone()).set(mine);
        let mut split_done = false;
        let led: Vec<RegionDescriptor> = {
            let raft = core.raft.borrow();
            raft.regions()
                .filter(|r| raft.is_leader(r.id))
                .cloned()
                .collect()
        };
        core.sizes
            .borrow_mut()
            .retain(|id, _| led.iter().any(|d| d.id == *id));
        for desc in led {
            let Ok((start, end)) = layout::slot_range(&desc) else {
                continue;
            };
            let mut target = None;
            if measure_sizes {
                let db = core.db.clone();
                let d = desc.clone();
                if let Ok((size, slot)) = blocking(move || measure(&db, &d)).await {
                    core.sizes.borrow_mut().insert(desc.id, size);
                    if node.region_max_bytes > 0 && size > node.region_max_bytes {
                        if end - start < 2 {
                            unsplittable("size");
                            tracing::warn!(region = desc.id, size, max = node.region_max_bytes, "region past --region-max-bytes holds one hash slot: it cannot split");
                        } else {
                            target = Some((slot, "size"));
                        }
                    }
                }
            }
            if let (None, Some(f)) = (target, loads.get(&desc.id)) {
                let hot = (node.split_load_qps > 0 && f.ops_per_sec >= node.split_load_qps as f64)
                    || (node.split_load_bytes > 0
                        && f.bytes_per_sec >= node.split_load_bytes as f64);
                if hot {
                    match load::split_slot(f, start, end) {
                        Some(slot) => target = Some((slot, "load")),
                        None => {
                            unsplittable("load");
                            tracing::warn!(
                                region = desc.id,
                                ops_per_sec = f.ops_per_sec,
                                top_key = %String::from_utf8_lossy(&f.top_key),
                                top_share = f.top_share,
                                "region past the load limit has its load in one hash slot: it cannot split"
                            );
                        }
                    }
                }
            }
            let Some((slot, reason)) = target else {
                continue;
            };
            match split(&core, desc.id, Some(slot)).await {
                Ok((child, slot)) => {
                    split_done = true;
                    tracing::info!(region = desc.id, child, slot, "split by {reason}")
                }
                Err(reply) => {
                    tracing::debug!(region = desc.id, reply = ?reply, "split by {reason} not done")
                }
            }
        }
        if measure_sizes {
            let bytes: u64 = core.sizes.borrow().values().sum();
            node.core_bytes[core.id].store(bytes, Ordering::Relaxed);
            metrics::gauge!(CORE_BYTES, "core" => label.clone()).set(bytes as f64);
        }
        if merges && !split_done {
            super::merge::merge_cold(&core, &loads).await;
        }
        if cooldown > 0 {
            cooldown -= 1;
        } else if balance
            && (balance_cores(&core, &loads, mine).await
                || (measure_sizes && balance_sizes(&core, &loads, mine).await))
        {
            // The moved load shows in the next window's rates: skip one.
            cooldown = 1;
        }
    }
}

/// When this core served more than 1.25x the cores' mean request rate over the last
/// interval (in a cluster: the requests of the regions each core leads), moves its
/// busiest regions to the least busy core, as long as
/// their rates add up to at most half the gap between the two (so the moves cannot
/// overshoot), at most [`MAX_BALANCE_MOVES`] per call.
async fn balance_cores(
    core: &Rc<Core>,
    loads: &HashMap<u64, load::LoadFigures>,
    mine: f64,
) -> bool {
    let node = &core.node;
    let rates: Vec<f64> = node
        .core_ops
        .iter()
        .map(|r| r.load(Ordering::Relaxed) as f64)
        .collect();
    let mean = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
    if mean <= 0.0 || mine <= BALANCE_TOLERANCE * mean {
        return false;
    }
    let Some((to, least)) = rates
        .iter()
        .enumerate()
        .filter(|(c, _)| *c != core.id)
        .min_by(|a, b| a.1.total_cmp(b.1))
        .map(|(c, r)| (c, *r))
    else {
        return false;
    };
    let room = (mine - least) / 2.0;
    let mut picks: Vec<(u64, f64)> = {
        let raft = core.raft.borrow();
        loads
            .iter()
            .filter(|(id, f)| raft.is_leader(**id) && f.ops_per_sec > 0.0 && f.ops_per_sec <= room)
            .map(|(id, f)| (*id, f.ops_per_sec))
            .collect()
    };
    picks.sort_by(|a, b| b.1.total_cmp(&a.1));
    let (mut moved, mut moves) = (0.0, 0);
    for (region, rate) in picks {
        if moves >= MAX_BALANCE_MOVES || moved + rate > room {
            continue;
        }
        match super::moves::move_region(core, region, to).await {
            Ok(()) => {
                moved += rate;
                moves += 1;
                tracing::info!(
                    region,
                    from = core.id,
                    to,
                    rate,
                    mine,
                    mean,
                    "moved a region to balance the cores' load"
                );
            }
            Err(reply) => {
                tracing::debug!(region, to, reply = ?reply, "balancing move not done");
            }
        }
    }
    moves > 0
}

/// When the cores' load is balanced (this core within the load tolerance) and the regions
/// this core leads hold more than 1.25x the cores' mean data size (and at least
/// [`BALANCE_MIN_BYTES`] above it), moves its coldest regions to the core that holds the
/// least, as long as their sizes add up to at most half the gap between the two (the
/// moves cannot overshoot) and their request rates keep that core within the load
/// tolerance, at most [`MAX_BALANCE_MOVES`] per call.
async fn balance_sizes(
    core: &Rc<Core>,
    loads: &HashMap<u64, load::LoadFigures>,
    mine_rate: f64,
) -> bool {
    let node = &core.node;
    let rates: Vec<f64> = node
        .core_ops
        .iter()
        .map(|r| r.load(Ordering::Relaxed) as f64)
        .collect();
    let mean_rate = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
    if mean_rate > 0.0 && mine_rate > BALANCE_TOLERANCE * mean_rate {
        return false;
    }
    let bytes: Vec<u64> = node
        .core_bytes
        .iter()
        .map(|b| b.load(Ordering::Relaxed))
        .collect();
    let mean = bytes.iter().sum::<u64>() / bytes.len().max(1) as u64;
    let mine = bytes[core.id];
    if (mine as f64) <= BALANCE_TOLERANCE * mean as f64
        || mine.saturating_sub(mean) < BALANCE_MIN_BYTES
    {
        return false;
    }
    let Some((to, least)) = bytes
        .iter()
        .enumerate()
        .filter(|(c, _)| *c != core.id)
        .min_by_key(|(_, b)| **b)
        .map(|(c, b)| (c, *b))
    else {
        return false;
    };
    let room = mine.saturating_sub(least) / 2;
    let rate_room = match mean_rate > 0.0 {
        true => BALANCE_TOLERANCE * mean_rate - rates[to],
        false => f64::INFINITY,
    };
    let rate_of = |id: &u64| loads.get(id).map_or(0.0, |f| f.ops_per_sec);
    let mut picks: Vec<(u64, u64, f64)> = {
        let raft = core.raft.borrow();
        core.sizes
            .borrow()
            .iter()
            .filter(|(id, size)| raft.is_leader(**id) && **size > 0 && **size <= room)
            .map(|(id, size)| (*id, *size, rate_of(id)))
            .collect()
    };
    // Coldest first, then largest.
    picks.sort_by(|a, b| a.2.total_cmp(&b.2).then(b.1.cmp(&a.1)));
    let (mut moved, mut moved_rate, mut moves) = (0u64, 0.0, 0);
    for (region, size, rate) in picks {
        if moves >= MAX_BALANCE_MOVES || moved + size > room || moved_rate + rate > rate_room {
            continue;
        }
        match super::moves::move_region(core, region, to).await {
            Ok(()) => {
                moved += size;
                moved_rate += rate;
                moves += 1;
                tracing::info!(
                    region,
                    from = core.id,
                    to,
                    size,
                    mine,
                    mean,
                    "moved a region to balance the cores' data size"
                );
            }
            Err(reply) => {
                tracing::debug!(region, to, reply = ?reply, "size balancing move not done");
            }
        }
    }
    moves > 0
}

/// `NOKV.REGION HOT` on one core: a line per region it led in the last check interval,
/// busiest first.
pub(super) fn hot_local(core: &Rc<Core>) -> Vec<(f64, Reply)> {
    let mut out: Vec<(f64, Reply)> = core
        .loads
        .last()
        .into_iter()
        .map(|(region, f)| {
            let key: String = f
                .top_key
                .iter()
                .flat_map(|b| std::ascii::escape_default(*b))
                .map(char::from)
                .collect();
            let line = format!(
                "region={region} core={} ops_per_sec={:.1} bytes_per_sec={:.0} top_key=\"{key}\" top_share={:.2}",
                core.id, f.ops_per_sec, f.bytes_per_sec, f.top_share
            );
            (f.ops_per_sec, Reply::Bulk(line.into_bytes()))
        })
        .collect();
    out.sort_by(|a, b| b.0.total_cmp(&a.0));
    out
}

/// Whether `desc` holds every key (by hash slot); true when its bounds are not slots.
pub(super) fn holds(desc: &RegionDescriptor, keys: &[&[u8]]) -> bool {
    let Ok((start, end)) = layout::slot_range(desc) else {
        return true;
    };
    keys.iter().all(|k| {
        let s = u32::from(nokv_gateway::model::slot(k));
        start <= s && s < end
    })
}

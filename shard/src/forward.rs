//! Commands for regions this store does not lead: forwarded to the leader's store over the
//! RPC port (`nokv_raft::kv`, the default) or answered with `-MOVED` (`--redirect moved`),
//! tried again with backoff while no leader is known, and answered `-TRYAGAIN` or
//! `-CLUSTERDOWN` once `--request-timeout-ms` has passed (never a hang). Also the service
//! that runs the key-value requests other stores (and `nokv-client`) send to this one.
//!
//! A child module of `node` (it works on the core's private state).

use super::*;
use crate::transport::{KvCallError, KvService};
use nokv_gateway::exec::ReadOp;
use nokv_raft::kv::{KvKind, KvOutcome, KvRequest, KvResponse};
use std::future::Future;
use std::pin::Pin;
use std::rc::Weak;

/// First pause before a command whose region has no reachable leader is tried again.
const RETRY_FIRST: Duration = Duration::from_millis(10);
/// Longest pause between two tries.
const RETRY_MAX: Duration = Duration::from_millis(500);
/// Leader hints followed one after the other without a pause.
const MAX_QUICK_HOPS: u32 = 3;
/// How much longer than the deadline it sends along a forwarding store waits, so that
/// the leader's own deadline answer arrives first.
const ANSWER_GRACE: Duration = Duration::from_millis(200);
/// First pause before work planned before a split or a move is planned again.
const REPLAN_PAUSE: Duration = Duration::from_millis(2);
/// Longest pause between two plans of such work.
const REPLAN_PAUSE_MAX: Duration = Duration::from_millis(50);
/// How long such work waits for the split or move to finish before `-TRYAGAIN`.
const REPLAN_WAIT: Duration = Duration::from_secs(3);

/// What forwarding a command once gave.
enum Forwarded {
    /// The leader's reply.
    Reply(Reply),
    /// The store is no (longer the) leader; it named this one (None: none known).
    NotLeader(Option<u64>),
    /// Not run there (not reached, no replica there): try again.
    Retry(String),
    /// A write was sent but no answer came: it may have run, so it is not sent again.
    Unknown(String),
}

/// Runs `work` (for core `target` of this store, or `layout::NOT_HERE`) and gives the
/// client's reply: from this store when it leads the region, else from the leader's store
/// (forwarded) or as `-MOVED`, within the request deadline.
pub(super) async fn run(core: &Rc<Core>, target: usize, work: Work) -> Reply {
    let Some(cluster) = core.node.cluster.as_ref() else {
        return match execute(core, target, work).await {
            Answer::Reply(reply) => reply,
            Answer::Elsewhere { work, .. } => moved(core, work.region(), work_slot(&work)),
            Answer::Stale(work) => replan(core, target, work).await,
        };
    };
    let region = work.region();
    let is_write = matches!(work, Work::Write { .. });
    let deadline = Instant::now() + cluster.request_timeout;
    let mut work = work;
    let mut pause = RETRY_FIRST;
    let mut hint: Option<u64> = None;
    let mut quick_hops = 0;
    // The store last believed to lead the region, and why the last try failed.
    let mut leader_seen: Option<u64> = None;
    let mut last_error = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = future::or(async { Some(execute(core, target, work).await) }, async {
            glommio::timer::sleep(left).await;
            None
        })
        .await;
        let leader = match attempt {
            None => return deadline_passed(cluster, region, is_write, leader_seen, &last_error),
            Some(Answer::Reply(reply)) => return reply,
            Some(Answer::Stale(w)) => return replan(core, target, w).await,
            Some(Answer::Elsewhere { work: w, leader }) => {
                work = w;
                leader
            }
        };
        if !cluster.forward || matches!(work, Work::Admin { .. }) {
            return moved(core, region, work_slot(&work));
        }
        let to = hint.take().or(leader).filter(|s| *s != cluster.store_id);
        let mut quick = false;
        if let Some(store) = to {
            leader_seen = Some(store);
            match forward_once(core, cluster, store, &work, deadline).await {
                Forwarded::Reply(reply) => return reply,
                Forwarded::NotLeader(named) => {
                    last_error = format!("store {store} does not lead it");
                    hint = named.filter(|s| *s != store && *s != cluster.store_id);
                    if hint.is_some() && quick_hops < MAX_QUICK_HOPS {
                        quick_hops += 1;
                        quick = true;
                    }
                }
                Forwarded::Retry(detail) => last_error = detail,
                Forwarded::Unknown(detail) => {
                    return Reply::error(format!(
                        "TRYAGAIN write to region {region} forwarded to store {store} got no answer ({detail}); it may still apply"
                    ))
                }
            }
        } else {
            last_error = "no leader known".into();
        }
        if Instant::now() >= deadline {
            return deadline_passed(cluster, region, is_write, leader_seen, &last_error);
        }
        if quick {
            continue;
        }
        let wait = pause.min(deadline.saturating_duration_since(Instant::now()));
        if !admin::sleep_unless_stopped(core, wait).await {
            return Reply::error("ERR request abandoned: the core is stopping");
        }
        pause = (pause * 2).min(RETRY_MAX);
    }
}

/// Runs work again whose region no longer holds its keys (a split applied after it was
/// planned) or left core `from` (a move): planned with the current routes, after a short
/// pause (the routes follow a split once its round applied). Each part of the new plan may
/// come back once more.
fn replan(core: &Rc<Core>, from: usize, work: Work) -> Pin<Box<dyn Future<Output = Reply> + '_>> {
    Box::pin(async move {
        let region = work.region();
        let deadline = Instant::now() + REPLAN_WAIT;
        let mut pause = REPLAN_PAUSE;
        let mut work = Some(work);
        // Bounded by the deadline: the routes follow a split once its round applied, a
        // move once the target holds the region.
        loop {
            if !admin::sleep_unless_stopped(core, pause).await {
                return Reply::error("ERR request abandoned: the core is stopping");
            }
            pause = (pause * 2).min(REPLAN_PAUSE_MAX);
            let Some(w) = work.take() else {
                return Reply::error("ERR internal: nothing to plan again");
            };
            let routes = core.routes();
            let plan = match &w {
                Work::Read { op, .. } => route::plan_read(&routes, op.clone()),
                Work::Write { cmd, .. } => match route::plan_write(&routes, cmd.clone()) {
                    Ok(plan) => plan,
                    Err(reply) => return reply,
                },
                Work::Admin { .. } | Work::Txn { .. } => {
                    return Reply::error(format!("ERR region {region} changed, retry"));
                }
            };
            let unchanged = plan.parts.len() == 1
                && plan.parts[0].1.region() == region
                && plan.parts[0].0 == from;
            if !unchanged {
                return run_plan(core, plan).await;
            }
            if Instant::now() >= deadline {
                // Not run: the client retries.
                return Reply::error(format!(
                    "TRYAGAIN region {region} is being split or moved; nothing was written, retry"
                ));
            }
            // Still the same region on the same core: a split or a move that is not done
            // yet pauses it; try it there again.
            let (target, part) = match plan.parts.into_iter().next() {
                Some(p) => p,
                None => return Reply::error("ERR internal: an empty plan"),
            };
            match execute(core, target, part).await {
                Answer::Reply(reply) => return reply,
                Answer::Stale(w) => work = Some(w),
                // Led by another store now: the usual path forwards it or answers -MOVED.
                Answer::Elsewhere { work: w, .. } => return run(core, target, w).await,
            }
        }
    })
}

/// The reply once a command's deadline passed: `-TRYAGAIN` while some store was believed
/// to lead the region, `-CLUSTERDOWN` when none was.
fn deadline_passed(
    cluster: &ClusterNode,
    region: u64,
    is_write: bool,
    leader: Option<u64>,
    last_error: &str,
) -> Reply {
    let ms = cluster.request_timeout.as_millis();
    let maybe = if is_write { "; it may still apply" } else { "" };
    match leader {
        Some(store) => Reply::error(format!(
            "TRYAGAIN region {region} (led by store {store}) did not answer within {ms} ms ({last_error}){maybe}"
        )),
        None => Reply::error(format!(
            "CLUSTERDOWN region {region} has no leader (none found within {ms} ms){maybe}"
        )),
    }
}

/// Sends `work` to `store` once and waits for its answer, at most until `deadline` (plus
/// [`ANSWER_GRACE`]).
async fn forward_once(
    core: &Rc<Core>,
    cluster: &ClusterNode,
    store: u64,
    work: &Work,
    deadline: Instant,
) -> Forwarded {
    let Some(transport) = &core.transport else {
        return Forwarded::Retry("this store has no RPC transport".into());
    };
    let (kind, payload) = match work {
        Work::Read { op, .. } => (KvKind::Read, op.encode()),
        Work::Write { cmd, .. } => (KvKind::Write, cmd.encode()),
        Work::Txn { req, .. } => (KvKind::Txn, req.encode()),
        Work::Admin { .. } => {
            return Forwarded::Retry("operator commands are not forwarded".into())
        }
    };
    let region = work.region();
    let left = deadline.saturating_duration_since(Instant::now());
    let request = KvRequest {
        region_id: region,
        kind: kind as i32,
        payload,
        timeout_ms: u32::try_from(left.as_millis()).unwrap_or(u32::MAX).max(1),
        from_store: cluster.store_id,
    };
    core.metrics.forwarded();
    match transport
        .kv_call(store, &request, left + ANSWER_GRACE)
        .await
    {
        Ok(KvResponse {
            outcome: Some(KvOutcome::Reply(bytes)),
        }) => Forwarded::Reply(Reply::from_binary(&bytes).unwrap_or_else(|e| {
            Reply::error(format!(
                "ERR undecodable reply from store {store} for region {region}: {e}"
            ))
        })),
        Ok(KvResponse {
            outcome: Some(KvOutcome::NotLeader(named)),
        }) => Forwarded::NotLeader((named != 0).then_some(named)),
        Ok(KvResponse {
            outcome: Some(KvOutcome::RegionNotFound(_)),
        }) => Forwarded::Retry(format!("store {store} holds no replica of it")),
        Ok(KvResponse {
            outcome: Some(KvOutcome::Refused(why)),
        }) => Forwarded::Reply(Reply::error(format!(
            "ERR store {store} refused the command for region {region}: {why}"
        ))),
        Ok(KvResponse { outcome: None }) => Forwarded::Reply(Reply::error(format!(
            "ERR empty answer from store {store} for region {region}"
        ))),
        Err(e @ KvCallError::NotSent { .. }) => Forwarded::Retry(e.to_string()),
        Err(e @ KvCallError::NoAnswer { .. }) if kind == KvKind::Read => {
            Forwarded::Retry(e.to_string())
        }
        Err(e @ KvCallError::NoAnswer { .. }) => Forwarded::Unknown(e.to_string()),
    }
}

/// Waits for the reply of a write proposed on this core: in a cluster at most
/// `--request-timeout-ms` (then `-TRYAGAIN`: the write may still apply).
pub(super) async fn await_write(core: &Core, rx: oneshot::Receiver<Reply>) -> Reply {
    let abandoned = || Reply::error("ERR write abandoned: the core is stopping");
    let Some(cluster) = &core.node.cluster else {
        return rx.await.unwrap_or_else(abandoned);
    };
    let limit = cluster.request_timeout;
    let reply = future::or(async { Some(rx.await) }, async {
        glommio::timer::sleep(limit).await;
        None
    })
    .await;
    match reply {
        Some(r) => r.unwrap_or_else(abandoned),
        None => Reply::error(format!(
            "TRYAGAIN write not confirmed by a quorum within {} ms; it may still apply",
            limit.as_millis()
        )),
    }
}

/// Runs the key-value requests that arrive on a core's RPC connections: on the region's
/// core of this store, never forwarded further.
pub(super) struct Service(pub(super) Weak<Core>);

impl KvService for Service {
    fn call(self: Rc<Self>, request: KvRequest) -> Pin<Box<dyn Future<Output = KvResponse>>> {
        Box::pin(async move {
            match self.0.upgrade() {
                Some(core) => serve(&core, request).await,
                None => KvResponse::new(KvOutcome::Refused("the store is stopping".into())),
            }
        })
    }
}

/// Runs one key-value request on this store.
async fn serve(core: &Rc<Core>, request: KvRequest) -> KvResponse {
    let region = request.region_id;
    let refused = |why: String| KvResponse::new(KvOutcome::Refused(why));
    let work = match KvKind::try_from(request.kind) {
        Ok(KvKind::Read) => match ReadOp::decode(&request.payload) {
            Ok(op) => Work::Read { region, op },
            Err(e) => return refused(format!("undecodable read for region {region}: {e}")),
        },
        Ok(KvKind::Write) => match WriteCommand::decode(&request.payload) {
            Ok(cmd) => Work::Write { region, cmd },
            Err(e) => return refused(format!("undecodable write for region {region}: {e}")),
        },
        Ok(KvKind::Txn) => match nokv_raft::txn_wire::TxnRequest::decode(&request.payload) {
            Ok(req) => Work::Txn { region, req },
            Err(e) => return refused(format!("undecodable txn request for region {region}: {e}")),
        },
        _ => return refused(format!("unknown request kind {}", request.kind)),
    };
    let Some(target) = core
        .routes()
        .core_of(region)
        .or_else(|| core.node.hosted_core(region))
    else {
        return KvResponse::new(KvOutcome::RegionNotFound(region));
    };
    let is_write = matches!(work, Work::Write { .. })
        || matches!(&work, Work::Txn { req, .. } if !req.is_read());
    let default = core
        .node
        .cluster
        .as_ref()
        .map_or(Duration::from_secs(5), |c| c.request_timeout);
    let limit = match request.timeout_ms {
        0 => default,
        ms => Duration::from_millis(u64::from(ms)).min(default),
    };
    let answer = future::or(async { Some(execute(core, target, work).await) }, async {
        glommio::timer::sleep(limit).await;
        None
    })
    .await;
    match answer {
        Some(Answer::Reply(reply)) => KvResponse::new(KvOutcome::Reply(reply.to_binary())),
        // Planned by the sender before a split it has not seen: nothing was run.
        Some(Answer::Stale(_)) => KvResponse::new(KvOutcome::Reply(
            Reply::error(format!(
                "TRYAGAIN region {region} was split; nothing was written, retry"
            ))
            .to_binary(),
        )),
        Some(Answer::Elsewhere { leader, .. }) => {
            let own = core.node.cluster.as_ref().map_or(0, |c| c.store_id);
            KvResponse::new(KvOutcome::NotLeader(
                leader.filter(|s| *s != own).unwrap_or(0),
            ))
        }
        None => {
            let maybe = if is_write { "; it may still apply" } else { "" };
            KvResponse::new(KvOutcome::Reply(
                Reply::error(format!(
                    "TRYAGAIN region {region} did not answer within {} ms{maybe}",
                    limit.as_millis()
                ))
                .to_binary(),
            ))
        }
    }
}

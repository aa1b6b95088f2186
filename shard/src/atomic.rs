//! Cross-region atomic commands and lock resolution on a store (`nokv_gateway::atomic`):
//! a core drives the MSET / MSETNX / DEL / EXISTS of its connections whose keys span
//! regions, and
//! resolves the locks any command of its connections meets (`-LOCKED` from a read or an
//! apply), so no client ever sees a lock.
//!
//! A child module of `node` (it runs plans through the core's planner and forwarding).

use super::*;
use nokv_gateway::atomic::{self as protocol, Runner};
use nokv_gateway::WriteOp;

/// Runs the protocol's steps through the core's planner: split per region, forwarded to
/// other cores and to region leaders on other stores.
struct CoreRunner<'a>(&'a Rc<Core>);

impl Runner for CoreRunner<'_> {
    async fn write(&self, cmd: WriteCommand) -> Reply {
        match route::plan_write(&self.0.routes(), cmd) {
            Ok(plan) => run_plan(self.0, plan).await,
            Err(reply) => reply,
        }
    }

    async fn sleep(&self, d: Duration) {
        glommio::timer::sleep(d).await
    }

    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

/// Whether `keys` live in more than one region.
fn spans_regions(core: &Core, keys: &[&[u8]]) -> bool {
    let routes = core.routes();
    let first = keys.first().map(|k| routes.for_key(k).region);
    keys.iter().any(|k| Some(routes.for_key(k).region) != first)
}

/// Whether `cmd` is an MSET / MSETNX / DEL or a MULTI block over several regions, which the core drives
/// atomically (unless the `NOKV_DEBUG_MULTIKEY_SPLIT` negative control is on).
pub(super) fn driven(core: &Core, cmd: &WriteCommand) -> bool {
    !core.node.knobs.multikey_split
        && protocol::needs_driver(&cmd.op)
        && spans_regions(core, &cmd.op.keys())
}

/// The keys of an EXISTS over several regions, which the core counts as of one instant
/// (unless the negative control is on).
pub(super) fn driven_exists(core: &Core, op: &ReadOp) -> Option<Vec<Vec<u8>>> {
    match op {
        ReadOp::Exists(keys)
            if !core.node.knobs.multikey_split && spans_regions(core, &op.keys()) =>
        {
            Some(keys.clone())
        }
        _ => None,
    }
}

/// Runs an EXISTS over several regions as of one instant.
pub(super) async fn exists(core: &Rc<Core>, keys: Vec<Vec<u8>>) -> Reply {
    protocol::exists(&CoreRunner(core), keys).await
}

/// Under the `NOKV_DEBUG_MULTIKEY_SPLIT` negative control: whether `cmd` is a MULTI
/// block over several regions, which then runs as one independent block per region.
pub(super) fn split_block(core: &Core, cmd: &WriteCommand) -> bool {
    core.node.knobs.multikey_split
        && matches!(cmd.op, WriteOp::Exec { .. })
        && spans_regions(core, &cmd.op.keys())
}

/// The negative control's block: each region's share runs as a block of its own, at the
/// same time, and the replies are put back in block order (not atomic, not isolated).
pub(super) async fn run_split_block(core: &Rc<Core>, cmd: WriteCommand) -> Reply {
    let WriteOp::Exec { watched, items } = &cmd.op else {
        return Reply::error("ERR internal: not a MULTI block");
    };
    let routes = core.routes();
    let Some(shares) =
        nokv_gateway::exec::split_block(watched, items, |k| routes.for_key(k).region)
    else {
        return Reply::error(nokv_gateway::exec::EXEC_CROSS_REGION);
    };
    drop(routes);
    let tasks: Vec<_> = shares
        .into_iter()
        .map(|(_, watched, items, at)| {
            let c = core.clone();
            let share = WriteCommand {
                now_ms: cmd.now_ms,
                op: WriteOp::Exec { watched, items },
            };
            glommio::spawn_local(async move {
                let reply = match route::plan_write(&c.routes(), share) {
                    Ok(plan) => run_plan(&c, plan).await,
                    Err(reply) => reply,
                };
                (at, reply)
            })
        })
        .collect();
    let mut out = vec![Reply::Null; items.len()];
    for t in tasks {
        match t.await {
            (at, Reply::Array(replies)) => {
                for (p, r) in at.into_iter().zip(replies) {
                    if let Some(o) = out.get_mut(p as usize) {
                        *o = r;
                    }
                }
            }
            (_, other) => return other,
        }
    }
    Reply::Array(out)
}

/// Runs a multi-region MSET / MSETNX / DEL or MULTI block atomically.
pub(super) async fn drive(core: &Rc<Core>, cmd: WriteCommand) -> Reply {
    protocol::drive(&CoreRunner(core), cmd).await
}

/// Runs `plan` (a connection's read or write), resolving the locks it meets and running it
/// again; `first` is the reply of an attempt already made.
pub(super) async fn run_resolving(core: &Rc<Core>, plan: Plan, first: Option<Reply>) -> Reply {
    let r = CoreRunner(core);
    protocol::resolving(&r, first, || run_plan(core, plan.clone())).await
}

//! Splitting a read or write over the regions its keys live in, and merging the parts'
//! replies: the same rules as the store's own planner (`shard/src/route.rs`, described in
//! `docs/redis.md`, "Atomicity and replication"), on the client's route cache.
//!
//! Single-key commands go to one region. MGET/EXISTS/DEL/MSET whose keys span regions
//! become one sub-command per region (each atomic on its own); MSETNX across regions is
//! refused. KEYS, DBSIZE, INFO keyspace and FLUSHDB go to every region. SCAN reads one
//! region per call and continues at the next region's first slot.

use crate::routes::{routing_key, RegionRoute, RouteCache};
use nokv_gateway::exec::{AtomicAction, ReadOp, ScanArgs, WriteCommand, WriteOp};
use nokv_gateway::Reply;

/// One region's part of a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// A read (`ReadOp::encode` on the wire).
    Read(ReadOp),
    /// A write (`WriteCommand::encode` on the wire).
    Write(WriteCommand),
    /// A transactional operation (`TxnRequest::encode` on the wire, `KvKind::Txn`).
    Txn(nokv_raft::txn_wire::TxnRequest),
}

/// A part and where it goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// The region it was planned for.
    pub region: u64,
    /// The routing key it was planned by (a region's start key for whole-region work).
    pub routing: Vec<u8>,
    /// Its first key, for error messages (empty for whole-region work).
    pub key: Vec<u8>,
    /// What to run.
    pub work: Work,
}

/// How the parts' replies combine.
#[derive(Debug, Clone, PartialEq)]
pub enum Merge {
    /// One part: its reply as is.
    Single,
    /// MGET: part i answered for these positions of the original key list (of length n).
    Positions(Vec<Vec<usize>>, usize),
    /// EXISTS, DEL, DBSIZE: the sum of integer replies.
    Sum,
    /// MSET, FLUSHDB: `+OK` unless a part failed.
    AllOk,
    /// KEYS: the arrays concatenated.
    Concat,
    /// INFO: the session's text plus the summed `# Keyspace` section.
    Info(String),
    /// SCAN in a region: when it ran out, continue at this position (the next region's start).
    Scan(Option<Vec<u8>>),
}

/// The parts of one command and how to merge their replies.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The parts, run concurrently.
    pub parts: Vec<Part>,
    /// How their replies combine.
    pub merge: Merge,
}

/// Why a command could not be planned.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanError {
    /// The cache has no region for this routing key (refresh the routes, plan again).
    NoRoute(Vec<u8>),
    /// The command is refused as such: this is its reply.
    Reply(Reply),
}

/// `-CROSSSLOT` for an MSETNX over several regions (the store's text).
pub const CROSS_REGION: &str =
    "CROSSSLOT Keys in request don't hash to the same region (MSETNX needs one region: use {hash tags})";

fn region_of<'a>(cache: &'a RouteCache, key: &[u8]) -> Result<&'a RegionRoute, PlanError> {
    let rk = routing_key(key);
    cache
        .lookup(&rk)
        .ok_or_else(|| PlanError::NoRoute(rk.to_vec()))
}

fn part(r: &RegionRoute, key: &[u8], work: Work) -> Part {
    Part {
        region: r.id,
        routing: if key.is_empty() {
            r.start_key.clone()
        } else {
            routing_key(key).to_vec()
        },
        key: key.to_vec(),
        work,
    }
}

/// Items grouped by region, each with its position in the command.
type Groups<'a, T> = Vec<(&'a RegionRoute, Vec<(usize, T)>)>;

/// Groups `items` by region, keeping each item's position.
fn group<T>(
    cache: &RouteCache,
    items: Vec<T>,
    key: impl Fn(&T) -> &[u8],
) -> Result<Groups<'_, T>, PlanError> {
    let mut out: Groups<'_, T> = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let r = region_of(cache, key(&item))?;
        match out.iter_mut().find(|(g, _)| g.id == r.id) {
            Some((_, v)) => v.push((i, item)),
            None => out.push((r, vec![(i, item)])),
        }
    }
    Ok(out)
}

fn everywhere(cache: &RouteCache, work: impl Fn() -> Work) -> Result<Vec<Part>, PlanError> {
    if !cache.is_complete() {
        return Err(PlanError::NoRoute(Vec::new()));
    }
    Ok(cache.regions().map(|r| part(r, &[], work())).collect())
}

/// Where a SCAN resumes: the position (slot-prefixed metadata key) to start at.
pub fn scan_start(args: &ScanArgs) -> Vec<u8> {
    match (&args.resume, args.cursor) {
        (Some(pos), _) => pos.clone(),
        (None, 0) => Vec::new(),
        (None, c) => ((c & (nokv_gateway::model::SLOTS as u64 - 1)) as u16)
            .to_be_bytes()
            .to_vec(),
    }
}

/// The routing key of a scan position (its slot; the start of the key space when empty).
pub fn position_routing(pos: &[u8]) -> [u8; 2] {
    match pos {
        [a, b, ..] => [*a, *b],
        [a] => [*a, 0],
        [] => [0, 0],
    }
}

/// Plans a read.
pub fn plan_read(cache: &RouteCache, op: ReadOp) -> Result<Plan, PlanError> {
    let single = |key: Vec<u8>, op: ReadOp| -> Result<Plan, PlanError> {
        let r = region_of(cache, &key)?;
        Ok(Plan {
            parts: vec![part(r, &key, Work::Read(op))],
            merge: Merge::Single,
        })
    };
    let make = if matches!(op, ReadOp::MGet(_)) {
        ReadOp::MGet
    } else {
        ReadOp::Versions
    };
    match op {
        // MGET and WATCH's versions: an answer per key, by position.
        ReadOp::MGet(keys) | ReadOp::Versions(keys) => {
            let n = keys.len();
            let mut positions = Vec::new();
            let mut parts = Vec::new();
            for (r, items) in group(cache, keys, |k| k)? {
                positions.push(items.iter().map(|(i, _)| *i).collect());
                let keys: Vec<Vec<u8>> = items.into_iter().map(|(_, k)| k).collect();
                let first = keys.first().cloned().unwrap_or_default();
                parts.push(part(r, &first, Work::Read(make(keys))));
            }
            Ok(Plan {
                parts,
                merge: Merge::Positions(positions, n),
            })
        }
        ReadOp::Exists(keys) => {
            let mut parts = Vec::new();
            for (r, items) in group(cache, keys, |k| k)? {
                let keys: Vec<Vec<u8>> = items.into_iter().map(|(_, k)| k).collect();
                let first = keys.first().cloned().unwrap_or_default();
                parts.push(part(r, &first, Work::Read(ReadOp::Exists(keys))));
            }
            Ok(Plan {
                parts,
                merge: Merge::Sum,
            })
        }
        ReadOp::Scan(mut args) => {
            let start = scan_start(&args);
            let rk = position_routing(&start);
            let r = cache
                .lookup(&rk)
                .ok_or_else(|| PlanError::NoRoute(rk.to_vec()))?;
            let next = cache.next(r).map(|n| n.start_key.clone());
            if next.is_none() && !r.end_key.is_empty() {
                // The next region is not cached: refresh rather than end the walk early.
                return Err(PlanError::NoRoute(r.end_key.clone()));
            }
            args.resume = Some(start);
            Ok(Plan {
                parts: vec![Part {
                    region: r.id,
                    routing: rk.to_vec(),
                    key: Vec::new(),
                    work: Work::Read(ReadOp::Scan(args)),
                }],
                merge: Merge::Scan(next),
            })
        }
        ReadOp::Keys(p) => Ok(Plan {
            parts: everywhere(cache, || Work::Read(ReadOp::Keys(p.clone())))?,
            merge: Merge::Concat,
        }),
        ReadOp::DbSize => Ok(Plan {
            parts: everywhere(cache, || Work::Read(ReadOp::DbSize))?,
            merge: Merge::Sum,
        }),
        ReadOp::Info { text, keyspace } => {
            let parts = if keyspace {
                everywhere(cache, || {
                    Work::Read(ReadOp::Info {
                        text: String::new(),
                        keyspace: true,
                    })
                })?
            } else {
                Vec::new()
            };
            Ok(Plan {
                parts,
                merge: Merge::Info(text),
            })
        }
        ReadOp::Get(ref k)
        | ReadOp::Strlen(ref k)
        | ReadOp::Type(ref k)
        | ReadOp::Ttl { key: ref k, .. }
        | ReadOp::HGet(ref k, _)
        | ReadOp::HMGet(ref k, _)
        | ReadOp::HGetAll(ref k)
        | ReadOp::HLen(ref k)
        | ReadOp::HExists(ref k, _)
        | ReadOp::HKeys(ref k)
        | ReadOp::HVals(ref k)
        | ReadOp::HScan(ref k, _) => {
            let k = k.clone();
            single(k, op)
        }
    }
}

/// Plans a write.
pub fn plan_write(cache: &RouteCache, cmd: WriteCommand) -> Result<Plan, PlanError> {
    let now_ms = cmd.now_ms;
    let write = |op| Work::Write(WriteCommand { now_ms, op });
    if let WriteOp::FlushDb = cmd.op {
        return Ok(Plan {
            parts: everywhere(cache, || write(WriteOp::FlushDb))?,
            merge: Merge::AllOk,
        });
    }
    let mut keys = cmd.op.keys();
    if keys.is_empty() {
        // An EXEC of key-less commands: any region runs it.
        keys.push(b"");
    }
    let mut regions = Vec::with_capacity(keys.len());
    for k in &keys {
        regions.push(region_of(cache, k)?.id);
    }
    if let (Some(first), Some(r0)) = (keys.first(), regions.first()) {
        if regions.iter().all(|r| r == r0) {
            let first = first.to_vec();
            let r = region_of(cache, &first)?;
            return Ok(Plan {
                parts: vec![part(r, &first, Work::Write(cmd))],
                merge: Merge::Single,
            });
        }
    }
    let merge = match &cmd.op {
        WriteOp::MSet {
            if_none_exist: true,
            ..
        } => return Err(PlanError::Reply(Reply::error(CROSS_REGION))),
        WriteOp::Exec { .. } => {
            return Err(PlanError::Reply(Reply::error(
                nokv_gateway::exec::EXEC_CROSS_REGION,
            )))
        }
        // An atomic write's lock step answers per key: merged by position (filled in below).
        WriteOp::Atomic(s) if matches!(s.action, AtomicAction::Lock { .. }) => {
            Merge::Positions(Vec::new(), keys.len())
        }
        // A block's parts answer [positions, replies] each: the driver reorders.
        WriteOp::Atomic(s) if matches!(s.action, AtomicAction::LockExec { .. }) => Merge::Concat,
        WriteOp::MSet { .. } | WriteOp::Atomic(_) => Merge::AllOk,
        WriteOp::Del { .. } => Merge::Sum,
        // Every other write has one key (or none): handled above.
        other => {
            return Err(PlanError::Reply(Reply::error(format!(
                "ERR internal: a multi-region plan for {:?}",
                std::mem::discriminant(other)
            ))))
        }
    };
    let region_ids: std::collections::HashMap<Vec<u8>, u64> = keys
        .iter()
        .zip(&regions)
        .map(|(k, r)| (k.to_vec(), *r))
        .collect();
    let region_id = |k: &[u8]| region_ids.get(k).copied().unwrap_or(0);
    let ops = cmd.op.split_by(region_id).map_err(|op| {
        PlanError::Reply(Reply::error(match op {
            // A command of a MULTI block whose own keys span regions.
            WriteOp::Atomic(_) => nokv_gateway::exec::EXEC_CROSS_REGION.to_string(),
            op => format!(
                "ERR internal: a multi-region plan for {:?}",
                std::mem::discriminant(&op)
            ),
        }))
    })?;
    let mut parts = Vec::with_capacity(ops.len());
    let mut positions = Vec::with_capacity(ops.len());
    for (at, op) in ops {
        let first = op.keys().first().map(|k| k.to_vec()).unwrap_or_default();
        let r = region_of(cache, &first)?;
        parts.push(part(r, &first, write(op)));
        positions.push(at);
    }
    let merge = match merge {
        Merge::Positions(_, n) => Merge::Positions(positions, n),
        other => other,
    };
    Ok(Plan { parts, merge })
}

/// Whether `keys` live in more than one region (or a route is missing).
pub fn spans_regions(cache: &RouteCache, keys: &[&[u8]]) -> bool {
    let mut regions = keys.iter().map(|k| region_of(cache, k).ok().map(|r| r.id));
    match regions.next() {
        None => false,
        Some(first) => first.is_none() || regions.any(|r| r != first),
    }
}

fn keyspace_counts(reply: &Reply) -> Option<(u64, u64)> {
    let text = match reply {
        Reply::Verbatim(t) | Reply::Bulk(t) => String::from_utf8_lossy(t),
        _ => return None,
    };
    let Some(line) = text.lines().find(|l| l.starts_with("db0:")) else {
        return Some((0, 0));
    };
    let (mut keys, mut expires) = (0, 0);
    for part in line.trim_start_matches("db0:").split(',') {
        if let Some(v) = part.strip_prefix("keys=") {
            keys = v.trim().parse().ok()?;
        } else if let Some(v) = part.strip_prefix("expires=") {
            expires = v.trim().parse().ok()?;
        }
    }
    Some((keys, expires))
}

/// Combines the parts' replies (in part order); the first error reply wins.
pub fn merge(merge: Merge, replies: Vec<Reply>) -> Reply {
    if let Some(e) = replies.iter().find(|r| r.is_error()) {
        return e.clone();
    }
    match merge {
        Merge::Single => replies.into_iter().next().unwrap_or(Reply::Null),
        Merge::Positions(positions, n) => {
            let mut out = vec![Reply::Null; n];
            for (pos, reply) in positions.iter().zip(replies) {
                let Reply::Array(items) = reply else {
                    return Reply::error("ERR internal: MGET part did not return an array");
                };
                for (p, item) in pos.iter().zip(items) {
                    if let Some(slot) = out.get_mut(*p) {
                        *slot = item;
                    }
                }
            }
            Reply::Array(out)
        }
        Merge::Sum => {
            let mut sum = 0i64;
            for r in replies {
                match r {
                    Reply::Int(n) => sum = sum.saturating_add(n),
                    _ => return Reply::error("ERR internal: expected an integer part"),
                }
            }
            Reply::Int(sum)
        }
        Merge::AllOk => Reply::ok(),
        Merge::Concat => Reply::Array(
            replies
                .into_iter()
                .flat_map(|r| match r {
                    Reply::Array(items) => items,
                    _ => Vec::new(),
                })
                .collect(),
        ),
        Merge::Info(mut text) => {
            if replies.is_empty() {
                return Reply::Verbatim(text.into_bytes());
            }
            let (mut keys, mut expires) = (0u64, 0u64);
            for r in &replies {
                let Some((k, e)) = keyspace_counts(r) else {
                    return Reply::error("ERR internal: unreadable keyspace part");
                };
                keys += k;
                expires += e;
            }
            if !text.is_empty() {
                text.push_str("\r\n");
            }
            text.push_str("# Keyspace\r\n");
            if keys > 0 {
                text.push_str(&format!("db0:keys={keys},expires={expires},avg_ttl=0\r\n"));
            }
            Reply::Verbatim(text.into_bytes())
        }
        Merge::Scan(next) => match replies.into_iter().next() {
            Some(Reply::Scan(mut page)) => {
                if page.next.is_none() {
                    page.next = next;
                }
                Reply::Scan(page)
            }
            Some(other) => other,
            None => Reply::Null,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nokv_coordinator::proto::{Peer, Region, Route};

    /// Four regions cutting the slot space in equal quarters.
    fn cache() -> RouteCache {
        let bound = |i: u16| {
            if i == 0 || i == 4 {
                Vec::new()
            } else {
                (i * 4096).to_be_bytes().to_vec()
            }
        };
        let routes: Vec<Route> = (0..4u16)
            .map(|i| Route {
                region: Some(Region {
                    id: i as u64 + 1,
                    start_key: bound(i),
                    end_key: bound(i + 1),
                    epoch_version: 1,
                    epoch_conf_version: 1,
                    peers: vec![Peer {
                        id: i as u64 + 10,
                        store_id: 1,
                        core: Some(0),
                        learner: false,
                    }],
                }),
                leader_peer_id: i as u64 + 10,
                stores: Vec::new(),
                approximate_size_bytes: None,
            })
            .collect();
        let mut c = RouteCache::new();
        c.replace_all(&routes);
        c
    }

    fn keys_in_two_regions(c: &RouteCache) -> (Vec<u8>, Vec<u8>) {
        let a = b"a".to_vec();
        let ra = c.lookup(&routing_key(&a)).map(|r| r.id);
        let b = (0..1000)
            .map(|i| format!("k{i}").into_bytes())
            .find(|k| c.lookup(&routing_key(k)).map(|r| r.id) != ra)
            .unwrap_or_default();
        (a, b)
    }

    #[test]
    fn mget_splits_by_region_and_merges_by_position() {
        let c = cache();
        let (a, b) = keys_in_two_regions(&c);
        let plan =
            plan_read(&c, ReadOp::MGet(vec![a.clone(), b.clone(), a.clone()])).expect("plan");
        assert_eq!(plan.parts.len(), 2);
        assert_eq!(
            plan.parts[0].work,
            Work::Read(ReadOp::MGet(vec![a.clone(), a.clone()]))
        );
        assert_eq!(
            plan.parts[1].work,
            Work::Read(ReadOp::MGet(vec![b.clone()]))
        );
        let replies = vec![
            Reply::Array(vec![Reply::bulk("A"), Reply::bulk("A2")]),
            Reply::Array(vec![Reply::Null]),
        ];
        assert_eq!(
            merge(plan.merge, replies),
            Reply::Array(vec![Reply::bulk("A"), Reply::Null, Reply::bulk("A2")])
        );
    }

    #[test]
    fn writes_in_one_region_stay_whole_and_others_split_or_are_refused() {
        let c = cache();
        let (a, b) = keys_in_two_regions(&c);
        let one = WriteCommand {
            now_ms: 1,
            op: WriteOp::Del {
                keys: vec![b"{t}x".to_vec(), b"{t}y".to_vec()],
            },
        };
        let plan = plan_write(&c, one.clone()).expect("plan");
        assert_eq!((plan.parts.len(), plan.merge), (1, Merge::Single));
        assert_eq!(plan.parts[0].work, Work::Write(one));
        let del = WriteCommand {
            now_ms: 5,
            op: WriteOp::Del {
                keys: vec![a.clone(), b.clone()],
            },
        };
        let plan = plan_write(&c, del).expect("plan");
        assert_eq!((plan.parts.len(), plan.merge.clone()), (2, Merge::Sum));
        assert_eq!(
            merge(plan.merge, vec![Reply::Int(1), Reply::Int(0)]),
            Reply::Int(1)
        );
        let msetnx = WriteCommand {
            now_ms: 5,
            op: WriteOp::MSet {
                pairs: vec![(a, b"1".to_vec()), (b, b"2".to_vec())],
                if_none_exist: true,
            },
        };
        assert_eq!(
            plan_write(&c, msetnx),
            Err(PlanError::Reply(Reply::error(CROSS_REGION)))
        );
        let flush = WriteCommand {
            now_ms: 1,
            op: WriteOp::FlushDb,
        };
        assert_eq!(plan_write(&c, flush).expect("plan").parts.len(), 4);
    }

    #[test]
    fn scan_continues_at_the_next_region() {
        let c = cache();
        let args = ScanArgs {
            cursor: 0,
            resume: None,
            pattern: None,
            count: 10,
            kind: None,
            invalid: None,
        };
        let plan = plan_read(&c, ReadOp::Scan(args)).expect("plan");
        let next = 4096u16.to_be_bytes().to_vec();
        assert_eq!(plan.merge, Merge::Scan(Some(next.clone())));
        let page = nokv_gateway::resp::ScanPage {
            next: None,
            items: vec![],
        };
        let Reply::Scan(p) = merge(plan.merge, vec![Reply::Scan(page)]) else {
            panic!("not a scan page")
        };
        assert_eq!(p.next, Some(next));
    }

    #[test]
    fn a_missing_route_asks_for_a_refresh() {
        let mut c = cache();
        c.remove(2);
        let k = (0..1000)
            .map(|i| format!("k{i}").into_bytes())
            .find(|k| nokv_gateway::model::slot(k) / 4096 == 1)
            .unwrap_or_default();
        assert!(matches!(
            plan_read(&c, ReadOp::Get(k)),
            Err(PlanError::NoRoute(_))
        ));
        assert!(matches!(
            plan_read(&c, ReadOp::DbSize),
            Err(PlanError::NoRoute(_))
        ));
    }

    #[test]
    fn info_keyspace_sums_parts() {
        let parts = vec![
            Reply::Verbatim(b"# Keyspace\r\ndb0:keys=2,expires=1,avg_ttl=0\r\n".to_vec()),
            Reply::Verbatim(b"# Keyspace\r\n".to_vec()),
            Reply::Verbatim(b"# Keyspace\r\ndb0:keys=3,expires=0,avg_ttl=0\r\n".to_vec()),
        ];
        assert_eq!(
            merge(Merge::Info("# Server\r\n".into()), parts),
            Reply::Verbatim(
                b"# Server\r\n\r\n# Keyspace\r\ndb0:keys=5,expires=1,avg_ttl=0\r\n".to_vec()
            )
        );
    }
}

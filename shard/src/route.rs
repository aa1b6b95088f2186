//! Splitting a gateway action over the regions its keys live in, and merging the
//! partial replies back into the one reply the client expects.
//!
//! Single-key commands go to one region. MGET/EXISTS whose keys span regions are split
//! into one read per region. MSET/MSETNX/DEL over several regions are run by the atomic
//! protocol (`nokv_gateway::atomic`, driven by `node::atomic`), whose steps this planner
//! splits per region. KEYS, DBSIZE, INFO keyspace and FLUSHDB go to every region. SCAN
//! walks one region per call (see [`scan_start`]).

use crate::layout::{Route, RouteTable};
use nokv_gateway::exec::{AtomicAction, ReadOp, WriteCommand, WriteOp, EXEC_CROSS_REGION};
use nokv_gateway::Reply;

/// What a piece of work targets.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// A read of one region.
    Read {
        /// Region id.
        region: u64,
        /// The read.
        op: ReadOp,
    },
    /// A write proposed to one region.
    Write {
        /// Region id.
        region: u64,
        /// The write.
        cmd: WriteCommand,
    },
    /// An operator command (`NOKV.REGION ...`) for a region of the target core.
    Admin {
        /// Region id (0: the core's regions as a whole).
        region: u64,
        /// The command and its arguments.
        args: Vec<Vec<u8>>,
    },
    /// A transactional operation on one region (`KvKind::Txn`, `crate::node` `txn`).
    Txn {
        /// Region id.
        region: u64,
        /// The request.
        req: nokv_raft::txn_wire::TxnRequest,
    },
}

impl Work {
    /// The region the work is for.
    pub fn region(&self) -> u64 {
        match self {
            Work::Read { region, .. }
            | Work::Write { region, .. }
            | Work::Admin { region, .. }
            | Work::Txn { region, .. } => *region,
        }
    }
}

/// How the parts' replies combine.
#[derive(Debug, Clone, PartialEq)]
pub enum Merge {
    /// One part: its reply as is.
    Single,
    /// MGET: part i answered for these positions of the original key list.
    Positions(Vec<Vec<usize>>, usize),
    /// EXISTS, DEL, DBSIZE: the sum of integer replies.
    Sum,
    /// MSET, FLUSHDB: `+OK` unless a part failed.
    AllOk,
    /// KEYS: concatenate arrays.
    Concat,
    /// INFO: the session's text plus the summed `# Keyspace` section.
    Info(String),
    /// SCAN in a region: if it ran out, continue at the next region's first slot.
    Scan(Option<u16>),
}

/// The parts of one action and how to merge them.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// (owning core, work) per part.
    pub parts: Vec<(usize, Work)>,
    /// How their replies combine.
    pub merge: Merge,
}

/// `-CROSSSLOT` for an MSETNX over several regions planned without the atomic protocol
/// (only under the `NOKV_DEBUG_MULTIKEY_SPLIT` negative control).
pub const CROSS_REGION: &str =
    "CROSSSLOT Keys in request don't hash to the same region (MSETNX needs one region: use {hash tags})";

fn group<T>(
    routes: &RouteTable,
    items: Vec<T>,
    key: impl Fn(&T) -> &[u8],
) -> Vec<(&Route, Vec<(usize, T)>)> {
    let mut out: Vec<(&Route, Vec<(usize, T)>)> = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let r = routes.for_key(key(&item));
        match out.iter_mut().find(|(g, _)| g.region == r.region) {
            Some((_, v)) => v.push((i, item)),
            None => out.push((r, vec![(i, item)])),
        }
    }
    out
}

fn read_part(r: &Route, op: ReadOp) -> (usize, Work) {
    (
        r.core,
        Work::Read {
            region: r.region,
            op,
        },
    )
}

fn write_part(r: &Route, now_ms: u64, op: WriteOp) -> (usize, Work) {
    (
        r.core,
        Work::Write {
            region: r.region,
            cmd: WriteCommand { now_ms, op },
        },
    )
}

/// Where a SCAN resumes: the metadata key to start at (slot-prefixed).
pub fn scan_start(args: &nokv_gateway::exec::ScanArgs) -> Vec<u8> {
    match (&args.resume, args.cursor) {
        (Some(pos), _) => pos.clone(),
        (None, 0) => Vec::new(),
        (None, c) => ((c & (nokv_gateway::model::SLOTS as u64 - 1)) as u16)
            .to_be_bytes()
            .to_vec(),
    }
}

/// The slot of a read's (first) key, for `-MOVED`; None for reads of every region.
pub fn read_slot(op: &ReadOp) -> Option<u16> {
    read_keys(op).first().map(|k| nokv_gateway::model::slot(k))
}

/// The keys a read touches (empty for reads of whole regions: SCAN, KEYS, DBSIZE, INFO).
pub fn read_keys(op: &ReadOp) -> Vec<&[u8]> {
    op.keys()
}

/// Plans a read.
pub fn plan_read(routes: &RouteTable, op: ReadOp) -> Plan {
    let single = |key: &[u8], op: ReadOp| Plan {
        parts: vec![read_part(routes.for_key(key), op)],
        merge: Merge::Single,
    };
    let everywhere = |op: ReadOp, merge: Merge| Plan {
        parts: routes
            .all()
            .iter()
            .map(|r| read_part(r, op.clone()))
            .collect(),
        merge,
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
            let groups = group(routes, keys, |k| k);
            let mut positions = Vec::new();
            let mut parts = Vec::new();
            for (r, items) in groups {
                positions.push(items.iter().map(|(i, _)| *i).collect());
                parts.push(read_part(
                    r,
                    make(items.into_iter().map(|(_, k)| k).collect()),
                ));
            }
            Plan {
                parts,
                merge: Merge::Positions(positions, n),
            }
        }
        ReadOp::Exists(keys) => {
            let parts = group(routes, keys, |k| k)
                .into_iter()
                .map(|(r, items)| {
                    read_part(
                        r,
                        ReadOp::Exists(items.into_iter().map(|(_, k)| k).collect()),
                    )
                })
                .collect();
            Plan {
                parts,
                merge: Merge::Sum,
            }
        }
        ReadOp::Scan(mut args) => {
            let start = scan_start(&args);
            let slot = match start.as_slice() {
                [a, b, ..] => u16::from_be_bytes([*a, *b]),
                _ => 0,
            };
            let r = routes.for_slot(slot);
            let next = routes.next(r).map(|n| n.start_slot as u16);
            args.resume = Some(start);
            Plan {
                parts: vec![read_part(r, ReadOp::Scan(args))],
                merge: Merge::Scan(next),
            }
        }
        ReadOp::Keys(p) => everywhere(ReadOp::Keys(p), Merge::Concat),
        ReadOp::DbSize => everywhere(ReadOp::DbSize, Merge::Sum),
        ReadOp::Info { text, keyspace } => {
            if keyspace {
                everywhere(
                    ReadOp::Info {
                        text: String::new(),
                        keyspace: true,
                    },
                    Merge::Info(text),
                )
            } else {
                Plan {
                    parts: Vec::new(),
                    merge: Merge::Info(text),
                }
            }
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
            single(&k, op)
        }
    }
}

/// Plans a write; Err is the reply to send at once.
pub fn plan_write(routes: &RouteTable, cmd: WriteCommand) -> Result<Plan, Reply> {
    let now = cmd.now_ms;
    if let WriteOp::FlushDb = cmd.op {
        return Ok(Plan {
            parts: routes
                .all()
                .iter()
                .map(|r| write_part(r, now, WriteOp::FlushDb))
                .collect(),
            merge: Merge::AllOk,
        });
    }
    let mut keys = cmd.op.keys();
    if keys.is_empty() {
        // An EXEC of key-less commands: any region runs it.
        keys.push(b"");
    }
    let first = keys.first().map(|k| routes.for_key(k));
    let one_region = keys
        .iter()
        .all(|k| Some(routes.for_key(k).region) == first.map(|r| r.region));
    if let (Some(r), true) = (first, one_region) {
        let r = r.clone();
        return Ok(Plan {
            parts: vec![write_part(&r, now, cmd.op)],
            merge: Merge::Single,
        });
    }
    let merge = match &cmd.op {
        WriteOp::MSet {
            if_none_exist: true,
            ..
        } => return Err(Reply::error(CROSS_REGION)),
        WriteOp::Exec { .. } => return Err(Reply::error(EXEC_CROSS_REGION)),
        WriteOp::MSet { .. } => Merge::AllOk,
        WriteOp::Del { .. } => Merge::Sum,
        // A lock step answers per key: merged by position (filled in below).
        WriteOp::Atomic(step) => match step.action {
            AtomicAction::Lock { .. } => Merge::Positions(Vec::new(), keys.len()),
            // A block's parts answer [positions, replies] each: the driver reorders.
            AtomicAction::LockExec { .. } => Merge::Concat,
            _ => Merge::AllOk,
        },
        other => {
            return Err(Reply::error(format!(
                "ERR internal: a multi-region plan for {:?}",
                std::mem::discriminant(other)
            )))
        }
    };
    match cmd.op.split_by(|k| routes.for_key(k).region) {
        Ok(ops) => {
            let mut positions = Vec::with_capacity(ops.len());
            let mut parts = Vec::with_capacity(ops.len());
            for (at, op) in ops {
                let r = routes.for_key(op.keys().first().copied().unwrap_or_default());
                parts.push(write_part(r, now, op));
                positions.push(at);
            }
            let merge = match merge {
                Merge::Positions(_, n) => Merge::Positions(positions, n),
                other => other,
            };
            Ok(Plan { parts, merge })
        }
        // A command of a MULTI block whose own keys span regions.
        Err(WriteOp::Atomic(_)) => Err(Reply::error(EXEC_CROSS_REGION)),
        Err(op) => Err(Reply::error(format!(
            "ERR internal: a multi-region plan for {:?}",
            std::mem::discriminant(&op)
        ))),
    }
}

fn keyspace_counts(reply: &Reply) -> Option<(u64, u64)> {
    let Reply::Verbatim(text) = reply else {
        return None;
    };
    let text = String::from_utf8_lossy(text);
    let Some(line) = text.lines().find(|l| l.starts_with("db0:")) else {
        return Some((0, 0));
    };
    let mut keys = 0;
    let mut expires = 0;
    for part in line.trim_start_matches("db0:").split(',') {
        if let Some(v) = part.strip_prefix("keys=") {
            keys = v.trim().parse().ok()?;
        } else if let Some(v) = part.strip_prefix("expires=") {
            expires = v.trim().parse().ok()?;
        }
    }
    Some((keys, expires))
}

/// Combines the parts' replies (in part order).
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
        Merge::Concat => {
            let mut out = Vec::new();
            for r in replies {
                if let Reply::Array(items) = r {
                    out.extend(items);
                }
            }
            Reply::Array(out)
        }
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
                    page.next = next.map(|s| s.to_be_bytes().to_vec());
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
    use crate::layout::bootstrap_regions;

    fn table() -> RouteTable {
        let per_core: Vec<_> = (0..2).map(|c| bootstrap_regions(2, 4, c)).collect();
        RouteTable::build(&per_core).expect("table")
    }

    fn keys_in_different_regions(t: &RouteTable) -> (Vec<u8>, Vec<u8>) {
        let a = b"a".to_vec();
        let ra = t.for_key(&a).region;
        let b = (0..1000)
            .map(|i| format!("k{i}").into_bytes())
            .find(|k| t.for_key(k).region != ra)
            .expect("some key elsewhere");
        (a, b)
    }

    #[test]
    fn mget_splits_and_merges_by_position() {
        let t = table();
        let (a, b) = keys_in_different_regions(&t);
        let plan = plan_read(&t, ReadOp::MGet(vec![a.clone(), b.clone(), a.clone()]));
        assert_eq!(plan.parts.len(), 2);
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
    fn writes_split_or_refuse() {
        let t = table();
        let (a, b) = keys_in_different_regions(&t);
        let del = WriteCommand {
            now_ms: 5,
            op: WriteOp::Del {
                keys: vec![a.clone(), b.clone()],
            },
        };
        let plan = plan_write(&t, del).expect("plan");
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
        assert_eq!(plan_write(&t, msetnx), Err(Reply::error(CROSS_REGION)));
        let flush = plan_write(
            &t,
            WriteCommand {
                now_ms: 1,
                op: WriteOp::FlushDb,
            },
        )
        .expect("plan");
        assert_eq!(flush.parts.len(), 8);
    }

    #[test]
    fn scan_continues_in_the_next_region() {
        let t = table();
        let args = nokv_gateway::exec::ScanArgs {
            cursor: 0,
            resume: None,
            pattern: None,
            count: 10,
            kind: None,
            invalid: None,
        };
        let plan = plan_read(&t, ReadOp::Scan(args));
        let next = t.all()[1].start_slot as u16;
        assert_eq!(plan.merge, Merge::Scan(Some(next)));
        let page = nokv_gateway::resp::ScanPage {
            next: None,
            items: vec![],
        };
        let Reply::Scan(p) = merge(plan.merge, vec![Reply::Scan(page)]) else {
            panic!("scan page")
        };
        assert_eq!(p.next, Some(next.to_be_bytes().to_vec()));
    }

    #[test]
    fn info_keyspace_sums_parts() {
        let parts = vec![
            Reply::Verbatim(b"# Keyspace\r\ndb0:keys=2,expires=1,avg_ttl=0\r\n".to_vec()),
            Reply::Verbatim(b"# Keyspace\r\n".to_vec()),
            Reply::Verbatim(b"# Keyspace\r\ndb0:keys=3,expires=0,avg_ttl=0\r\n".to_vec()),
        ];
        let r = merge(Merge::Info("# Server\r\n".into()), parts);
        assert_eq!(
            r,
            Reply::Verbatim(
                b"# Server\r\n\r\n# Keyspace\r\ndb0:keys=5,expires=1,avg_ttl=0\r\n".to_vec()
            )
        );
    }
}

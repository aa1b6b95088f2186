//! Key commands: validation at propose time, reads, and deterministic apply.
//!
//! [`prepare`] turns a request into a [`ReadOp`] or a [`WriteCommand`] (or an
//! error reply). A write is validated completely and its relative expiries
//! are turned into absolute unix-ms times there, so the value that travels in
//! the Raft log is all a replica needs: [`apply`] evaluates it against the
//! store at apply time, in log order, reading and writing through a
//! [`StateView`] and writing one `WriteBatch` at one explicit version. Reads
//! are evaluated by [`read`] against a [`ReadView`].

pub mod atomic;
pub mod codec;

use crate::command::CommandInfo;
use crate::error::Result;
use crate::glob;
use crate::lock::{self, Change, TxnId};
use crate::model::{self, Body, Meta, RedisType, META, SUBKEYS};
use crate::numeric::{string2ll, LongDouble};
use crate::resp::{Reply, ScanPage};
use crate::store::{ReadView, StateView};
use nokv::WriteBatch;
use std::collections::{BTreeMap, HashSet};

/// `-WRONGTYPE ...`.
pub const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
/// `-ERR syntax error`.
pub const SYNTAX: &str = "ERR syntax error";
/// `-ERR value is not an integer or out of range`.
pub const NOT_INTEGER: &str = "ERR value is not an integer or out of range";
/// `-ERR value is not a valid float`.
pub const NOT_FLOAT: &str = "ERR value is not a valid float";
/// `-ERR increment or decrement would overflow`.
pub const OVERFLOW: &str = "ERR increment or decrement would overflow";
/// `-CROSSSLOT` for an EXEC with a command whose own keys live in several regions.
pub const EXEC_CROSS_REGION: &str = "CROSSSLOT Keys in request don't hash to the same region (each command of a MULTI block must keep its own keys in one region: use {hash tags})";
/// Largest string a command may build (Redis `proto-max-bulk-len`).
pub const MAX_STRING_BYTES: usize = 512 << 20;
/// Hashes up to this many fields reply to HSCAN in one page, as Redis's listpack encoding does.
pub const HSCAN_SINGLE_PAGE_FIELDS: u64 = 128;

/// A read of the keyspace, evaluated by [`read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadOp {
    /// GET key.
    Get(Vec<u8>),
    /// STRLEN key.
    Strlen(Vec<u8>),
    /// MGET key...
    MGet(Vec<Vec<u8>>),
    /// EXISTS key...
    Exists(Vec<Vec<u8>>),
    /// TYPE key.
    Type(Vec<u8>),
    /// TTL / PTTL key.
    Ttl {
        /// The key.
        key: Vec<u8>,
        /// PTTL (milliseconds) rather than TTL (seconds).
        millis: bool,
    },
    /// HGET key field.
    HGet(Vec<u8>, Vec<u8>),
    /// HMGET key field...
    HMGet(Vec<u8>, Vec<Vec<u8>>),
    /// HGETALL key.
    HGetAll(Vec<u8>),
    /// HLEN key.
    HLen(Vec<u8>),
    /// HEXISTS key field.
    HExists(Vec<u8>, Vec<u8>),
    /// HKEYS key.
    HKeys(Vec<u8>),
    /// HVALS key.
    HVals(Vec<u8>),
    /// SCAN (over metadata keys in slot order).
    Scan(ScanArgs),
    /// HSCAN key (over fields in byte order).
    HScan(Vec<u8>, ScanArgs),
    /// KEYS pattern.
    Keys(Vec<u8>),
    /// DBSIZE.
    DbSize,
    /// WATCH's read: each key's version (its metadata record's; 0 when absent), an array.
    Versions(Vec<Vec<u8>>),
    /// INFO: `text` holds the rendered sections; the keyspace section is appended when asked.
    Info {
        /// Sections rendered by the session.
        text: String,
        /// Whether to append `# Keyspace`.
        keyspace: bool,
    },
}

/// The cursor and options of a SCAN or HSCAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanArgs {
    /// The cursor number the client sent.
    pub cursor: u64,
    /// Where to resume, filled in by the session from its cursor table (None: derive from `cursor`).
    pub resume: Option<Vec<u8>>,
    /// MATCH pattern (None: everything).
    pub pattern: Option<Vec<u8>>,
    /// COUNT: elements to examine.
    pub count: u64,
    /// TYPE filter (SCAN only).
    pub kind: Option<Vec<u8>>,
    /// An option error HSCAN reports only when the key exists (Redis parses them after the lookup).
    pub invalid: Option<String>,
}

/// A write, ready for the Raft log: validated, with absolute times only.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteCommand {
    /// The proposer's clock when the command was accepted; apply judges expiry against it.
    pub now_ms: u64,
    /// What to do.
    pub op: WriteOp,
}

/// The condition of a SET.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetCondition {
    /// Always.
    Always,
    /// NX: only if the key does not exist.
    IfAbsent,
    /// XX: only if the key exists.
    IfPresent,
}

/// What a write does to the key's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryUpdate {
    /// Keep what the key has (KEEPTTL, or GETEX without options).
    Keep,
    /// Remove it (plain SET, PERSIST).
    Clear,
    /// Expire at this unix-ms time.
    At(u64),
}

/// How SET replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetReply {
    /// `+OK` or null (SET, SETEX, PSETEX).
    Ok,
    /// `:1` or `:0` (SETNX).
    Int,
    /// The old value (SET ... GET).
    Old,
}

/// EXPIRE's NX/XX/GT/LT flags.
pub mod expire_flags {
    /// NX: only when the key has no expiry.
    pub const NX: u8 = 1;
    /// XX: only when the key has an expiry.
    pub const XX: u8 = 2;
    /// GT: only when the new expiry is greater.
    pub const GT: u8 = 4;
    /// LT: only when the new expiry is less.
    pub const LT: u8 = 8;
}

/// The write operations.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOp {
    /// SET / SETNX / SETEX / PSETEX.
    Set {
        /// Key.
        key: Vec<u8>,
        /// Value.
        value: Vec<u8>,
        /// NX / XX.
        condition: SetCondition,
        /// Expiry handling.
        expiry: ExpiryUpdate,
        /// Reply style.
        reply: SetReply,
    },
    /// GETSET key value.
    GetSet {
        /// Key.
        key: Vec<u8>,
        /// Value.
        value: Vec<u8>,
    },
    /// GETDEL key.
    GetDel {
        /// Key.
        key: Vec<u8>,
    },
    /// GETEX key [...].
    GetEx {
        /// Key.
        key: Vec<u8>,
        /// Expiry handling.
        expiry: ExpiryUpdate,
    },
    /// MSET / MSETNX.
    MSet {
        /// Key/value pairs in request order.
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
        /// MSETNX: only if no key exists.
        if_none_exist: bool,
    },
    /// APPEND key value.
    Append {
        /// Key.
        key: Vec<u8>,
        /// Bytes to append.
        value: Vec<u8>,
    },
    /// INCR / DECR / INCRBY / DECRBY.
    IncrBy {
        /// Key.
        key: Vec<u8>,
        /// Increment.
        delta: i64,
    },
    /// INCRBYFLOAT.
    IncrByFloat {
        /// Key.
        key: Vec<u8>,
        /// Increment, parsed as Redis's `long double`.
        delta: LongDouble,
    },
    /// DEL / UNLINK.
    Del {
        /// Keys.
        keys: Vec<Vec<u8>>,
    },
    /// EXPIRE / PEXPIRE / EXPIREAT / PEXPIREAT, with an absolute time.
    Expire {
        /// Key.
        key: Vec<u8>,
        /// Absolute unix-ms time (may be in the past or negative: the key is deleted).
        at_ms: i64,
        /// [`expire_flags`].
        flags: u8,
    },
    /// PERSIST key.
    Persist {
        /// Key.
        key: Vec<u8>,
    },
    /// FLUSHDB.
    FlushDb,
    /// HSET / HMSET.
    HSet {
        /// Key.
        key: Vec<u8>,
        /// Field/value pairs in request order.
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
        /// HMSET replies `+OK` instead of the count of new fields.
        reply_ok: bool,
    },
    /// HDEL key field...
    HDel {
        /// Key.
        key: Vec<u8>,
        /// Fields.
        fields: Vec<Vec<u8>>,
    },
    /// HINCRBY key field delta.
    HIncrBy {
        /// Key.
        key: Vec<u8>,
        /// Field.
        field: Vec<u8>,
        /// Increment.
        delta: i64,
    },
    /// A step of a cross-region atomic write (`crate::atomic`), applied in one region.
    Atomic(AtomicStep),
    /// EXEC of a MULTI block: nothing (a null array) if a watched key's version changed,
    /// else every item in order, as one write; the reply is the array of their replies.
    Exec {
        /// WATCHed keys and the versions WATCH read (0: absent).
        watched: Vec<(Vec<u8>, u64)>,
        /// The queued commands.
        items: Vec<ExecItem>,
    },
}

/// WATCHed keys and the versions WATCH read (0: absent).
pub type Watched = Vec<(Vec<u8>, u64)>;

/// A command queued in a MULTI block.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecItem {
    /// A read, evaluated in order with the block's writes.
    Read(ReadOp),
    /// A write.
    Write(WriteOp),
    /// A reply settled when the command was queued (a connection command, an argument error).
    Reply(Reply),
}

/// One step of a cross-region atomic write (see `crate::atomic` and `crate::lock`).
#[derive(Debug, Clone, PartialEq)]
pub struct AtomicStep {
    /// The transaction.
    pub txn: TxnId,
    /// Its primary key: the commit point, where its status is kept.
    pub primary: Vec<u8>,
    /// What to do.
    pub action: AtomicAction,
}

/// What an [`AtomicStep`] does.
#[derive(Debug, Clone, PartialEq)]
pub enum AtomicAction {
    /// Locks the keys with their pending changes, all or none: `-LOCKED` if another
    /// transaction holds one, `-ABORTED` if the transaction was rolled back. Replies an
    /// array with what each key holds, in order: null (absent), its value (a string) or
    /// `:1` (another type).
    Lock {
        /// Unix ms after which readers may roll the transaction back.
        deadline_ms: u64,
        /// Key and pending change.
        changes: Vec<(Vec<u8>, Change)>,
    },
    /// A MULTI block's part in one region: locks every key it reads, writes or watches
    /// (`-LOCKED`, `-ABORTED` as for `Lock`); answers `-WATCHFAILED` (internal) if a
    /// watched version moved; else runs the items against the locked state without
    /// writing, keeps each key's share of their writes in its lock (`Change::Writes`),
    /// and answers `[positions, replies]`.
    LockExec {
        /// Unix ms after which readers may roll the transaction back.
        deadline_ms: u64,
        /// This region's watched keys and versions.
        watched: Vec<(Vec<u8>, u64)>,
        /// This region's items, in block order.
        items: Vec<ExecItem>,
        /// Each item's position in the whole block.
        positions: Vec<u32>,
    },
    /// Applies the pending changes of the keys the transaction still locks and unlocks
    /// them; with the primary among them, records the commit first (`-ABORTED` if it was
    /// rolled back).
    Commit {
        /// Keys.
        keys: Vec<Vec<u8>>,
    },
    /// Unlocks the keys the transaction locks, dropping their changes; with the primary
    /// among them, records the rollback (refused once committed).
    Rollback {
        /// Keys.
        keys: Vec<Vec<u8>>,
    },
    /// The transaction's status at its primary: `:1` committed, `:2` rolled back (which
    /// it is made, when its primary lock is past its deadline or missing), `:0` running.
    Check,
    /// Drops the status record once every lock is resolved.
    Forget,
}

impl WriteOp {
    /// The user keys this write touches (empty for FLUSHDB, which touches all).
    pub fn keys(&self) -> Vec<&[u8]> {
        match self {
            WriteOp::Set { key, .. }
            | WriteOp::GetSet { key, .. }
            | WriteOp::GetDel { key }
            | WriteOp::GetEx { key, .. }
            | WriteOp::Append { key, .. }
            | WriteOp::IncrBy { key, .. }
            | WriteOp::IncrByFloat { key, .. }
            | WriteOp::Expire { key, .. }
            | WriteOp::Persist { key }
            | WriteOp::HSet { key, .. }
            | WriteOp::HDel { key, .. }
            | WriteOp::HIncrBy { key, .. } => vec![key.as_slice()],
            WriteOp::MSet { pairs, .. } => pairs.iter().map(|(k, _)| k.as_slice()).collect(),
            WriteOp::Del { keys } => keys.iter().map(Vec::as_slice).collect(),
            WriteOp::FlushDb => Vec::new(),
            WriteOp::Atomic(step) => match &step.action {
                AtomicAction::Lock { changes, .. } => {
                    changes.iter().map(|(k, _)| k.as_slice()).collect()
                }
                AtomicAction::Commit { keys } | AtomicAction::Rollback { keys } => {
                    keys.iter().map(Vec::as_slice).collect()
                }
                AtomicAction::Check | AtomicAction::Forget => vec![step.primary.as_slice()],
                AtomicAction::LockExec { watched, items, .. } => block_keys(watched, items),
            },
            WriteOp::Exec { watched, items } => block_keys(watched, items),
        }
    }

    /// Splits a write over several keys into one write per group of keys, groups given by
    /// `region_of` (in order of first appearance), each with the positions its keys had in
    /// [`WriteOp::keys`]: MSET (not MSETNX), DEL and the lock, commit and rollback steps of
    /// atomic writes, whose parts are independent per key. Every other write comes back as
    /// `Err`.
    pub fn split_by(
        self,
        region_of: impl Fn(&[u8]) -> u64,
    ) -> std::result::Result<Vec<(Vec<usize>, WriteOp)>, WriteOp> {
        fn groups<T>(
            items: Vec<T>,
            key: impl Fn(&T) -> &[u8],
            region_of: impl Fn(&[u8]) -> u64,
            make: impl Fn(Vec<T>) -> WriteOp,
        ) -> Vec<(Vec<usize>, WriteOp)> {
            let mut out: Vec<(u64, Vec<usize>, Vec<T>)> = Vec::new();
            for (i, item) in items.into_iter().enumerate() {
                let r = region_of(key(&item));
                match out.iter_mut().find(|(g, _, _)| *g == r) {
                    Some((_, at, v)) => {
                        at.push(i);
                        v.push(item);
                    }
                    None => out.push((r, vec![i], vec![item])),
                }
            }
            out.into_iter().map(|(_, at, v)| (at, make(v))).collect()
        }
        let step = |s: &AtomicStep, action| {
            WriteOp::Atomic(AtomicStep {
                txn: s.txn,
                primary: s.primary.clone(),
                action,
            })
        };
        Ok(match self {
            WriteOp::MSet {
                pairs,
                if_none_exist: false,
            } => groups(
                pairs,
                |(k, _)| k,
                region_of,
                |pairs| WriteOp::MSet {
                    pairs,
                    if_none_exist: false,
                },
            ),
            WriteOp::Del { keys } => groups(keys, |k| k, region_of, |keys| WriteOp::Del { keys }),
            WriteOp::Atomic(s) => match &s.action {
                AtomicAction::Lock {
                    deadline_ms,
                    changes,
                } => groups(
                    changes.clone(),
                    |(k, _)| k,
                    region_of,
                    |changes| {
                        step(
                            &s,
                            AtomicAction::Lock {
                                deadline_ms: *deadline_ms,
                                changes,
                            },
                        )
                    },
                ),
                AtomicAction::Commit { keys } => groups(
                    keys.clone(),
                    |k| k,
                    region_of,
                    |keys| step(&s, AtomicAction::Commit { keys }),
                ),
                AtomicAction::Rollback { keys } => groups(
                    keys.clone(),
                    |k| k,
                    region_of,
                    |keys| step(&s, AtomicAction::Rollback { keys }),
                ),
                AtomicAction::LockExec {
                    deadline_ms,
                    watched,
                    items,
                    positions,
                } => {
                    let Some(parts) = split_block(watched, items, region_of) else {
                        return Err(WriteOp::Atomic(s));
                    };
                    parts
                        .into_iter()
                        .map(|(_, w, its, at)| {
                            // Positions in the whole block (this step may be a part already).
                            let at: Vec<u32> = at
                                .iter()
                                .map(|p| positions.get(*p as usize).copied().unwrap_or(*p))
                                .collect();
                            let action = AtomicAction::LockExec {
                                deadline_ms: *deadline_ms,
                                watched: w,
                                items: its,
                                positions: at,
                            };
                            (Vec::new(), step(&s, action))
                        })
                        .collect()
                }
                AtomicAction::Check | AtomicAction::Forget => return Err(WriteOp::Atomic(s)),
            },
            other => return Err(other),
        })
    }
}

impl ExecItem {
    /// The user keys the item touches.
    pub fn keys(&self) -> Vec<&[u8]> {
        match self {
            ExecItem::Read(op) => op.keys(),
            ExecItem::Write(op) => op.keys(),
            ExecItem::Reply(_) => Vec::new(),
        }
    }
}

/// The keys of a MULTI block: watched, then each item's.
pub fn block_keys<'a>(watched: &'a [(Vec<u8>, u64)], items: &'a [ExecItem]) -> Vec<&'a [u8]> {
    let mut keys: Vec<&[u8]> = watched.iter().map(|(k, _)| k.as_slice()).collect();
    for item in items {
        keys.extend(item.keys());
    }
    keys
}

/// Splits a MULTI block by region: each region's watched keys and items (with their
/// positions in the block); key-less items go with the first region. None if an item's
/// own keys span regions.
#[allow(clippy::type_complexity)]
pub fn split_block(
    watched: &[(Vec<u8>, u64)],
    items: &[ExecItem],
    region_of: impl Fn(&[u8]) -> u64,
) -> Option<Vec<(u64, Vec<(Vec<u8>, u64)>, Vec<ExecItem>, Vec<u32>)>> {
    let mut out: Vec<(u64, Vec<(Vec<u8>, u64)>, Vec<ExecItem>, Vec<u32>)> = Vec::new();
    let group =
        |out: &mut Vec<(u64, Vec<(Vec<u8>, u64)>, Vec<ExecItem>, Vec<u32>)>, r: u64| match out
            .iter()
            .position(|g| g.0 == r)
        {
            Some(i) => i,
            None => {
                out.push((r, Vec::new(), Vec::new(), Vec::new()));
                out.len() - 1
            }
        };
    for (k, v) in watched {
        let i = group(&mut out, region_of(k));
        out[i].1.push((k.clone(), *v));
    }
    let mut keyless = Vec::new();
    for (pos, item) in items.iter().enumerate() {
        let keys = item.keys();
        let Some(first) = keys.first() else {
            keyless.push(pos);
            continue;
        };
        let r = region_of(first);
        if keys.iter().any(|k| region_of(k) != r) {
            return None;
        }
        let i = group(&mut out, r);
        out[i].2.push(item.clone());
        out[i].3.push(pos as u32);
    }
    if !keyless.is_empty() {
        if out.is_empty() {
            out.push((0, Vec::new(), Vec::new(), Vec::new()));
        }
        let first = &mut out[0];
        let mut merged: Vec<(u32, ExecItem)> =
            first.3.iter().copied().zip(first.2.drain(..)).collect();
        merged.extend(keyless.into_iter().map(|p| (p as u32, items[p].clone())));
        merged.sort_by_key(|(p, _)| *p);
        first.3 = merged.iter().map(|(p, _)| *p).collect();
        first.2 = merged.into_iter().map(|(_, it)| it).collect();
    }
    Some(out)
}

impl ReadOp {
    /// The user keys a read touches (empty for reads of whole regions: SCAN, KEYS,
    /// DBSIZE, INFO).
    pub fn keys(&self) -> Vec<&[u8]> {
        match self {
            ReadOp::MGet(keys) | ReadOp::Exists(keys) | ReadOp::Versions(keys) => {
                keys.iter().map(Vec::as_slice).collect()
            }
            ReadOp::Scan(_) | ReadOp::Keys(_) | ReadOp::DbSize | ReadOp::Info { .. } => Vec::new(),
            ReadOp::Get(k)
            | ReadOp::Strlen(k)
            | ReadOp::Type(k)
            | ReadOp::Ttl { key: k, .. }
            | ReadOp::HGet(k, _)
            | ReadOp::HMGet(k, _)
            | ReadOp::HGetAll(k)
            | ReadOp::HLen(k)
            | ReadOp::HExists(k, _)
            | ReadOp::HKeys(k)
            | ReadOp::HVals(k)
            | ReadOp::HScan(k, _) => vec![k.as_slice()],
        }
    }
}

/// What a request became.
#[derive(Debug, Clone, PartialEq)]
pub enum Prepared {
    /// Evaluate with [`read`].
    Read(ReadOp),
    /// Propose, then evaluate with [`apply`].
    Write(WriteCommand),
    /// Answer at once (argument errors).
    Reply(Reply),
}

fn err(text: &str) -> Prepared {
    Prepared::Reply(Reply::error(text))
}

fn expire_error(cmd: &CommandInfo) -> Prepared {
    Prepared::Reply(Reply::error(format!(
        "ERR invalid expire time in '{}' command",
        cmd.name
    )))
}

fn arity_error(cmd: &CommandInfo) -> Prepared {
    Prepared::Reply(Reply::error(format!(
        "ERR wrong number of arguments for '{}' command",
        cmd.name
    )))
}

fn eq(a: &[u8], b: &str) -> bool {
    a.eq_ignore_ascii_case(b.as_bytes())
}

/// Validates a key command and turns it into a read or a write (or an error reply).
///
/// `now_ms` is the proposer's clock: relative expiries become absolute here.
pub fn prepare(cmd: &'static CommandInfo, mut args: Vec<Vec<u8>>, now_ms: u64) -> Prepared {
    if !cmd.arity_ok(args.len()) {
        return arity_error(cmd);
    }
    let write = |op: WriteOp| Prepared::Write(WriteCommand { now_ms, op });
    let name = cmd.name;
    // Take owned arguments by position without cloning.
    macro_rules! take {
        ($i:expr) => {
            std::mem::take(&mut args[$i])
        };
    }
    match name {
        "get" => Prepared::Read(ReadOp::Get(take!(1))),
        "strlen" => Prepared::Read(ReadOp::Strlen(take!(1))),
        "type" => Prepared::Read(ReadOp::Type(take!(1))),
        "ttl" | "pttl" => Prepared::Read(ReadOp::Ttl {
            key: take!(1),
            millis: name == "pttl",
        }),
        "mget" => Prepared::Read(ReadOp::MGet(args.split_off(1))),
        "exists" => Prepared::Read(ReadOp::Exists(args.split_off(1))),
        "hget" => Prepared::Read(ReadOp::HGet(take!(1), take!(2))),
        "hexists" => Prepared::Read(ReadOp::HExists(take!(1), take!(2))),
        "hmget" => {
            let fields = args.split_off(2);
            Prepared::Read(ReadOp::HMGet(std::mem::take(&mut args[1]), fields))
        }
        "hgetall" => Prepared::Read(ReadOp::HGetAll(take!(1))),
        "hlen" => Prepared::Read(ReadOp::HLen(take!(1))),
        "hkeys" => Prepared::Read(ReadOp::HKeys(take!(1))),
        "hvals" => Prepared::Read(ReadOp::HVals(take!(1))),
        "dbsize" => Prepared::Read(ReadOp::DbSize),
        "keys" => Prepared::Read(ReadOp::Keys(take!(1))),
        "scan" => prepare_scan(&args, 1, false)
            .map_or_else(Prepared::Reply, |a| Prepared::Read(ReadOp::Scan(a))),
        "hscan" => match prepare_scan(&args, 2, true) {
            Ok(a) => Prepared::Read(ReadOp::HScan(take!(1), a)),
            Err(Reply::Error(e)) if e != "ERR invalid cursor" => {
                let cursor = parse_scan_cursor(&args[2]).unwrap_or(0);
                Prepared::Read(ReadOp::HScan(
                    take!(1),
                    ScanArgs {
                        cursor,
                        resume: None,
                        pattern: None,
                        count: 10,
                        kind: None,
                        invalid: Some(e),
                    },
                ))
            }
            Err(r) => Prepared::Reply(r),
        },
        "set" => prepare_set(cmd, args, now_ms),
        "setnx" => write(WriteOp::Set {
            key: take!(1),
            value: take!(2),
            condition: SetCondition::IfAbsent,
            expiry: ExpiryUpdate::Clear,
            reply: SetReply::Int,
        }),
        "setex" | "psetex" => {
            let Some(n) = string2ll(&args[2]) else {
                return err(NOT_INTEGER);
            };
            let at = match expire_at(n, name == "setex", true, now_ms) {
                Some(at) => at,
                None => return expire_error(cmd),
            };
            write(WriteOp::Set {
                key: take!(1),
                value: take!(3),
                condition: SetCondition::Always,
                expiry: ExpiryUpdate::At(at),
                reply: SetReply::Ok,
            })
        }
        "getset" => write(WriteOp::GetSet {
            key: take!(1),
            value: take!(2),
        }),
        "getdel" => write(WriteOp::GetDel { key: take!(1) }),
        "getex" => prepare_getex(cmd, args, now_ms),
        "mset" | "msetnx" => {
            if args.len().is_multiple_of(2) {
                return arity_error(cmd);
            }
            let pairs = pairs_from(args.split_off(1));
            write(WriteOp::MSet {
                pairs,
                if_none_exist: name == "msetnx",
            })
        }
        "append" => write(WriteOp::Append {
            key: take!(1),
            value: take!(2),
        }),
        "incr" | "decr" => write(WriteOp::IncrBy {
            key: take!(1),
            delta: if name == "incr" { 1 } else { -1 },
        }),
        "incrby" | "decrby" => {
            let Some(n) = string2ll(&args[2]) else {
                return err(NOT_INTEGER);
            };
            let delta = if name == "incrby" {
                n
            } else if n == i64::MIN {
                return err("ERR decrement would overflow");
            } else {
                -n
            };
            write(WriteOp::IncrBy {
                key: take!(1),
                delta,
            })
        }
        "incrbyfloat" => match LongDouble::parse(&args[2]) {
            Some(delta) => write(WriteOp::IncrByFloat {
                key: take!(1),
                delta,
            }),
            None => err(NOT_FLOAT),
        },
        "del" | "unlink" => write(WriteOp::Del {
            keys: args.split_off(1),
        }),
        "expire" | "pexpire" | "expireat" | "pexpireat" => prepare_expire(cmd, args, now_ms),
        "persist" => write(WriteOp::Persist { key: take!(1) }),
        "flushdb" => {
            if args.len() > 2
                || (args.len() == 2 && !eq(&args[1], "sync") && !eq(&args[1], "async"))
            {
                return err(SYNTAX);
            }
            write(WriteOp::FlushDb)
        }
        "hset" | "hmset" => {
            if !args.len().is_multiple_of(2) {
                return arity_error(cmd);
            }
            let pairs = pairs_from(args.split_off(2));
            write(WriteOp::HSet {
                key: take!(1),
                pairs,
                reply_ok: name == "hmset",
            })
        }
        "hdel" => {
            let fields = args.split_off(2);
            write(WriteOp::HDel {
                key: take!(1),
                fields,
            })
        }
        "hincrby" => {
            let Some(delta) = string2ll(&args[3]) else {
                return err(NOT_INTEGER);
            };
            write(WriteOp::HIncrBy {
                key: take!(1),
                field: take!(2),
                delta,
            })
        }
        other => Prepared::Reply(Reply::error(format!(
            "ERR command '{other}' is not a key command"
        ))),
    }
}

fn pairs_from(flat: Vec<Vec<u8>>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    out
}

/// Redis's `getExpireMillisecondsOrReply`: `n` must be > 0; seconds are scaled;
/// relative times are added to `now_ms`; overflow is an error (None).
fn expire_at(n: i64, seconds: bool, relative: bool, now_ms: u64) -> Option<u64> {
    if n <= 0 || (seconds && n > i64::MAX / 1000) {
        return None;
    }
    let mut ms = if seconds { n * 1000 } else { n };
    if relative {
        ms = ms.checked_add(i64::try_from(now_ms).ok()?)?;
    }
    (ms > 0).then_some(ms as u64)
}

#[derive(Default)]
struct ExtFlags {
    nx: bool,
    xx: bool,
    get: bool,
    keepttl: bool,
    persist: bool,
    ex: bool,
    px: bool,
    exat: bool,
    pxat: bool,
}

impl ExtFlags {
    fn any_expire(&self) -> bool {
        self.ex || self.px || self.exat || self.pxat
    }
}

/// Redis's `parseExtendedStringArgumentsOrReply` for SET (`is_set`) and GETEX.
fn parse_ext_flags(
    args: &[Vec<u8>],
    start: usize,
    is_set: bool,
) -> std::result::Result<(ExtFlags, Option<usize>), ()> {
    let mut f = ExtFlags::default();
    let mut expire_arg = None;
    let mut j = start;
    while j < args.len() {
        let opt = &args[j];
        let has_next = j + 1 < args.len();
        if eq(opt, "nx") && !f.xx && is_set {
            f.nx = true;
        } else if eq(opt, "xx") && !f.nx && is_set {
            f.xx = true;
        } else if eq(opt, "get") && is_set {
            f.get = true;
        } else if eq(opt, "keepttl") && !f.persist && !f.any_expire() && is_set {
            f.keepttl = true;
        } else if eq(opt, "persist") && !is_set && !f.any_expire() && !f.keepttl {
            f.persist = true;
        } else if eq(opt, "ex")
            && !f.keepttl
            && !f.persist
            && !f.exat
            && !f.px
            && !f.pxat
            && has_next
        {
            f.ex = true;
            expire_arg = Some(j + 1);
            j += 1;
        } else if eq(opt, "px")
            && !f.keepttl
            && !f.persist
            && !f.ex
            && !f.exat
            && !f.pxat
            && has_next
        {
            f.px = true;
            expire_arg = Some(j + 1);
            j += 1;
        } else if eq(opt, "exat")
            && !f.keepttl
            && !f.persist
            && !f.ex
            && !f.px
            && !f.pxat
            && has_next
        {
            f.exat = true;
            expire_arg = Some(j + 1);
            j += 1;
        } else if eq(opt, "pxat")
            && !f.keepttl
            && !f.persist
            && !f.ex
            && !f.exat
            && !f.px
            && has_next
        {
            f.pxat = true;
            expire_arg = Some(j + 1);
            j += 1;
        } else {
            return Err(());
        }
        j += 1;
    }
    Ok((f, expire_arg))
}

fn ext_expiry(
    cmd: &CommandInfo,
    f: &ExtFlags,
    args: &[Vec<u8>],
    expire_arg: Option<usize>,
    now_ms: u64,
) -> std::result::Result<Option<u64>, Box<Prepared>> {
    let Some(i) = expire_arg else {
        return Ok(None);
    };
    let Some(n) = string2ll(&args[i]) else {
        return Err(Box::new(err(NOT_INTEGER)));
    };
    match expire_at(n, f.ex || f.exat, f.ex || f.px, now_ms) {
        Some(at) => Ok(Some(at)),
        None => Err(Box::new(expire_error(cmd))),
    }
}

fn prepare_set(cmd: &CommandInfo, mut args: Vec<Vec<u8>>, now_ms: u64) -> Prepared {
    let Ok((f, expire_arg)) = parse_ext_flags(&args, 3, true) else {
        return err(SYNTAX);
    };
    let at = match ext_expiry(cmd, &f, &args, expire_arg, now_ms) {
        Ok(at) => at,
        Err(p) => return *p,
    };
    let expiry = match at {
        Some(at) => ExpiryUpdate::At(at),
        None if f.keepttl => ExpiryUpdate::Keep,
        None => ExpiryUpdate::Clear,
    };
    let condition = if f.nx {
        SetCondition::IfAbsent
    } else if f.xx {
        SetCondition::IfPresent
    } else {
        SetCondition::Always
    };
    Prepared::Write(WriteCommand {
        now_ms,
        op: WriteOp::Set {
            key: std::mem::take(&mut args[1]),
            value: std::mem::take(&mut args[2]),
            condition,
            expiry,
            reply: if f.get { SetReply::Old } else { SetReply::Ok },
        },
    })
}

fn prepare_getex(cmd: &CommandInfo, mut args: Vec<Vec<u8>>, now_ms: u64) -> Prepared {
    let Ok((f, expire_arg)) = parse_ext_flags(&args, 2, false) else {
        return err(SYNTAX);
    };
    let at = match ext_expiry(cmd, &f, &args, expire_arg, now_ms) {
        Ok(at) => at,
        Err(p) => return *p,
    };
    let expiry = match at {
        Some(at) => ExpiryUpdate::At(at),
        None if f.persist => ExpiryUpdate::Clear,
        None => ExpiryUpdate::Keep,
    };
    Prepared::Write(WriteCommand {
        now_ms,
        op: WriteOp::GetEx {
            key: std::mem::take(&mut args[1]),
            expiry,
        },
    })
}

fn prepare_expire(cmd: &CommandInfo, mut args: Vec<Vec<u8>>, now_ms: u64) -> Prepared {
    let mut flags = 0u8;
    for opt in &args[3..] {
        flags |= if eq(opt, "nx") {
            expire_flags::NX
        } else if eq(opt, "xx") {
            expire_flags::XX
        } else if eq(opt, "gt") {
            expire_flags::GT
        } else if eq(opt, "lt") {
            expire_flags::LT
        } else {
            return Prepared::Reply(Reply::error(format!(
                "ERR Unsupported option {}",
                String::from_utf8_lossy(opt)
            )));
        };
    }
    use expire_flags::*;
    if flags & NX != 0 && flags & (XX | GT | LT) != 0 {
        return err("ERR NX and XX, GT or LT options at the same time are not compatible");
    }
    if flags & GT != 0 && flags & LT != 0 {
        return err("ERR GT and LT options at the same time are not compatible");
    }
    let Some(mut when) = string2ll(&args[2]) else {
        return err(NOT_INTEGER);
    };
    let seconds = cmd.name == "expire" || cmd.name == "expireat";
    let relative = cmd.name == "expire" || cmd.name == "pexpire";
    if seconds {
        if !(i64::MIN / 1000..=i64::MAX / 1000).contains(&when) {
            return expire_error(cmd);
        }
        when *= 1000;
    }
    let base = if relative { now_ms as i64 } else { 0 };
    if when > i64::MAX - base {
        return expire_error(cmd);
    }
    Prepared::Write(WriteCommand {
        now_ms,
        op: WriteOp::Expire {
            key: std::mem::take(&mut args[1]),
            at_ms: when + base,
            flags,
        },
    })
}

/// Redis 7.0's `parseScanCursorOrReply`: C `strtoul` over the whole string, no
/// leading space, no overflow (a minus sign wraps, an empty string is 0).
pub fn parse_scan_cursor(s: &[u8]) -> Option<u64> {
    let s = &s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())];
    if s.first()
        .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r'))
    {
        return None;
    }
    if s.is_empty() {
        return Some(0);
    }
    let (negative, digits) = match s[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut v: u64 = 0;
    for &d in digits {
        v = v.checked_mul(10)?.checked_add((d - b'0') as u64)?;
    }
    Some(if negative { v.wrapping_neg() } else { v })
}

/// Redis's `scanGenericCommand` option parsing; `cursor_at` is the cursor's position.
fn prepare_scan(
    args: &[Vec<u8>],
    cursor_at: usize,
    hash: bool,
) -> std::result::Result<ScanArgs, Reply> {
    let Some(cursor) = parse_scan_cursor(&args[cursor_at]) else {
        return Err(Reply::error("ERR invalid cursor"));
    };
    let mut out = ScanArgs {
        cursor,
        resume: None,
        pattern: None,
        count: 10,
        kind: None,
        invalid: None,
    };
    let mut i = cursor_at + 1;
    while i < args.len() {
        let left = args.len() - i;
        if eq(&args[i], "count") && left >= 2 {
            match string2ll(&args[i + 1]) {
                None => return Err(Reply::error(NOT_INTEGER)),
                Some(n) if n < 1 => return Err(Reply::error(SYNTAX)),
                Some(n) => out.count = n as u64,
            }
            i += 2;
        } else if eq(&args[i], "match") && left >= 2 {
            let p = &args[i + 1];
            out.pattern = (p.as_slice() != b"*").then(|| p.clone());
            i += 2;
        } else if eq(&args[i], "type") && !hash && left >= 2 {
            out.kind = Some(args[i + 1].clone());
            i += 2;
        } else {
            return Err(Reply::error(SYNTAX));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Reads.

fn load(view: &dyn ReadView, key: &[u8], now_ms: u64) -> Result<Option<Meta>> {
    match view.get(META, &model::meta_key(key))? {
        None => Ok(None),
        Some(raw) => {
            let meta = Meta::decode(&raw)?;
            Ok(meta.is_live(now_ms).then_some(meta))
        }
    }
}

fn storage_error(e: crate::Error) -> Reply {
    Reply::error(format!("ERR {e}"))
}

/// Evaluates a read against `view` with expiry judged at `now_ms`.
pub fn read(op: &ReadOp, view: &dyn ReadView, now_ms: u64) -> Reply {
    read_unlocked(op, view, now_ms).unwrap_or_else(storage_error)
}

/// Like [`read`], except that a view reporting `nokv::Error::WouldBlock` (a cache-only
/// read that needs disk IO) yields None instead of an error reply: the caller runs the
/// read again where IO may block.
pub fn try_read(op: &ReadOp, view: &dyn ReadView, now_ms: u64) -> Option<Reply> {
    match read_unlocked(op, view, now_ms) {
        Ok(reply) => Some(reply),
        Err(crate::Error::Store(e)) if e.is_would_block() => None,
        Err(e) => Some(storage_error(e)),
    }
}

fn string_of(meta: Option<Meta>) -> std::result::Result<Option<Vec<u8>>, Reply> {
    match meta {
        None => Ok(None),
        Some(Meta {
            body: Body::String(v),
            ..
        }) => Ok(Some(v)),
        Some(_) => Err(Reply::error(WRONGTYPE)),
    }
}

/// A hash's (generation, len), None when absent; WRONGTYPE when not a hash.
fn hash_of(meta: Option<Meta>) -> std::result::Result<Option<(u64, u64)>, Reply> {
    match meta {
        None => Ok(None),
        Some(Meta {
            body: Body::Hash { generation, len },
            ..
        }) => Ok(Some((generation, len))),
        Some(_) => Err(Reply::error(WRONGTYPE)),
    }
}

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(reply) => return Ok(reply),
        }
    };
}

fn hash_fields(
    view: &dyn ReadView,
    key: &[u8],
    generation: u64,
    limit: u64,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let prefix = model::subkey_prefix(key, generation);
    let end = nokv::db_iter::prefix_successor(&prefix);
    let mut out = Vec::new();
    view.scan(SUBKEYS, &prefix, end.as_deref(), &mut |k, v| {
        out.push((k[prefix.len()..].to_vec(), v.to_vec()));
        (out.len() as u64) < limit
    })?;
    Ok(out)
}

/// A read of keys none of which is locked by a multi-region write in flight; with a
/// lock, the `-LOCKED` reply the caller resolves.
fn read_unlocked(op: &ReadOp, view: &dyn ReadView, now: u64) -> Result<Reply> {
    if !view.may_hold_locks() {
        return read_inner(op, view, now);
    }
    match lock::check(view, &op.keys())? {
        Some(locked) => Ok(locked),
        None => read_inner(op, view, now),
    }
}

/// Evaluates a read, without looking for locks (a MULTI block's reads run with its keys
/// checked or locked by the block itself).
fn read_inner(op: &ReadOp, view: &dyn ReadView, now: u64) -> Result<Reply> {
    Ok(match op {
        ReadOp::Versions(keys) => {
            let mut out = Vec::with_capacity(keys.len());
            for k in keys {
                let v = view.version(META, &model::meta_key(k))?.unwrap_or(0);
                out.push(Reply::Int(v as i64));
            }
            Reply::Array(out)
        }
        ReadOp::Get(key) => match tri!(string_of(load(view, key, now)?)) {
            Some(v) => Reply::Bulk(v),
            None => Reply::Null,
        },
        ReadOp::Strlen(key) => {
            Reply::Int(tri!(string_of(load(view, key, now)?)).map_or(0, |v| v.len() as i64))
        }
        ReadOp::MGet(keys) => {
            let mut out = Vec::with_capacity(keys.len());
            for k in keys {
                out.push(match load(view, k, now)? {
                    Some(Meta {
                        body: Body::String(v),
                        ..
                    }) => Reply::Bulk(v),
                    _ => Reply::Null,
                });
            }
            Reply::Array(out)
        }
        ReadOp::Exists(keys) => {
            let mut n = 0;
            for k in keys {
                n += load(view, k, now)?.is_some() as i64;
            }
            Reply::Int(n)
        }
        ReadOp::Type(key) => Reply::Simple(
            load(view, key, now)?
                .map_or("none", |m| m.kind().name())
                .to_string(),
        ),
        ReadOp::Ttl { key, millis } => match load(view, key, now)? {
            None => Reply::Int(-2),
            Some(m) if m.expiry_ms == 0 => Reply::Int(-1),
            Some(m) => {
                let ttl = m.expiry_ms.saturating_sub(now) as i64;
                Reply::Int(if *millis { ttl } else { (ttl + 500) / 1000 })
            }
        },
        ReadOp::HGet(key, field) => match tri!(hash_of(load(view, key, now)?)) {
            None => Reply::Null,
            Some((generation, _)) => view
                .get(SUBKEYS, &model::subkey(key, generation, field))?
                .map_or(Reply::Null, Reply::Bulk),
        },
        ReadOp::HExists(key, field) => match tri!(hash_of(load(view, key, now)?)) {
            None => Reply::Int(0),
            Some((generation, _)) => Reply::Int(
                view.get(SUBKEYS, &model::subkey(key, generation, field))?
                    .is_some() as i64,
            ),
        },
        ReadOp::HMGet(key, fields) => {
            let hash = tri!(hash_of(load(view, key, now)?));
            let mut out = Vec::with_capacity(fields.len());
            for f in fields {
                out.push(match hash {
                    None => Reply::Null,
                    Some((generation, _)) => view
                        .get(SUBKEYS, &model::subkey(key, generation, f))?
                        .map_or(Reply::Null, Reply::Bulk),
                });
            }
            Reply::Array(out)
        }
        ReadOp::HLen(key) => {
            Reply::Int(tri!(hash_of(load(view, key, now)?)).map_or(0, |(_, len)| len as i64))
        }
        ReadOp::HGetAll(key) | ReadOp::HKeys(key) | ReadOp::HVals(key) => {
            let fields = match tri!(hash_of(load(view, key, now)?)) {
                None => Vec::new(),
                Some((generation, len)) => hash_fields(view, key, generation, len.max(1))?,
            };
            match op {
                ReadOp::HGetAll(_) => Reply::Map(
                    fields
                        .into_iter()
                        .map(|(f, v)| (Reply::Bulk(f), Reply::Bulk(v)))
                        .collect(),
                ),
                ReadOp::HKeys(_) => {
                    Reply::Array(fields.into_iter().map(|(f, _)| Reply::Bulk(f)).collect())
                }
                _ => Reply::Array(fields.into_iter().map(|(_, v)| Reply::Bulk(v)).collect()),
            }
        }
        ReadOp::HScan(key, args) => {
            let Some((generation, len)) = tri!(hash_of(load(view, key, now)?)) else {
                return Ok(Reply::Scan(ScanPage {
                    next: None,
                    items: Vec::new(),
                }));
            };
            if let Some(e) = &args.invalid {
                return Ok(Reply::Error(e.clone()));
            }
            let prefix = model::subkey_prefix(key, generation);
            let end = nokv::db_iter::prefix_successor(&prefix);
            let single_page = len <= HSCAN_SINGLE_PAGE_FIELDS;
            let mut start = prefix.clone();
            if !single_page {
                if let Some(resume) = &args.resume {
                    start.extend_from_slice(resume);
                }
            }
            let limit = if single_page { len + 1 } else { args.count };
            let mut items = Vec::new();
            let mut examined = 0u64;
            let mut next = None;
            view.scan(SUBKEYS, &start, end.as_deref(), &mut |k, v| {
                let field = &k[prefix.len()..];
                if examined == limit {
                    next = Some(field.to_vec());
                    return false;
                }
                examined += 1;
                if args
                    .pattern
                    .as_deref()
                    .is_none_or(|p| glob::matches(p, field))
                {
                    items.push(Reply::bulk(field));
                    items.push(Reply::bulk(v));
                }
                true
            })?;
            Reply::Scan(ScanPage { next, items })
        }
        ReadOp::Scan(args) => {
            let start = match (&args.resume, args.cursor) {
                (Some(pos), _) => pos.clone(),
                (None, 0) => Vec::new(),
                (None, c) => ((c & (model::SLOTS as u64 - 1)) as u16)
                    .to_be_bytes()
                    .to_vec(),
            };
            let mut items = Vec::new();
            let mut examined = 0u64;
            let mut next = None;
            let mut failure = None;
            view.scan(META, &start, None, &mut |k, v| {
                if examined == args.count {
                    next = Some(k.to_vec());
                    return false;
                }
                examined += 1;
                let meta = match Meta::decode(v) {
                    Ok(m) => m,
                    Err(e) => {
                        failure = Some(e);
                        return false;
                    }
                };
                if !meta.is_live(now) {
                    return true;
                }
                let user = model::user_key(k);
                if let Some(kind) = &args.kind {
                    if !eq(kind, meta.kind().name()) {
                        return true;
                    }
                }
                if args
                    .pattern
                    .as_deref()
                    .is_none_or(|p| glob::matches(p, user))
                {
                    items.push(Reply::bulk(user));
                }
                true
            })?;
            if let Some(e) = failure {
                return Err(e);
            }
            Reply::Scan(ScanPage { next, items })
        }
        ReadOp::Keys(pattern) => {
            let all = pattern.as_slice() == b"*";
            let mut items = Vec::new();
            let mut failure = None;
            view.scan(META, &[], None, &mut |k, v| {
                match Meta::decode(v) {
                    Ok(m) if m.is_live(now) => {
                        let user = model::user_key(k);
                        if all || glob::matches(pattern, user) {
                            items.push(Reply::bulk(user));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        failure = Some(e);
                        return false;
                    }
                }
                true
            })?;
            if let Some(e) = failure {
                return Err(e);
            }
            Reply::Array(items)
        }
        ReadOp::DbSize => Reply::Int(count_keys(view, now)?.0 as i64),
        ReadOp::Info { text, keyspace } => {
            let mut text = text.clone();
            if *keyspace {
                let (keys, expires) = count_keys(view, now)?;
                if !text.is_empty() {
                    text.push_str("\r\n");
                }
                text.push_str("# Keyspace\r\n");
                if keys > 0 {
                    text.push_str(&format!("db0:keys={keys},expires={expires},avg_ttl=0\r\n"));
                }
            }
            Reply::Verbatim(text.into_bytes())
        }
    })
}

/// Live keys and live keys with an expiry.
fn count_keys(view: &dyn ReadView, now: u64) -> Result<(u64, u64)> {
    let (mut keys, mut expires) = (0u64, 0u64);
    let mut failure = None;
    view.scan(META, &[], None, &mut |_, v| {
        match Meta::decode(v) {
            Ok(m) if m.is_live(now) => {
                keys += 1;
                expires += (m.expiry_ms != 0) as u64;
            }
            Ok(_) => {}
            Err(e) => {
                failure = Some(e);
                return false;
            }
        }
        true
    })?;
    match failure {
        Some(e) => Err(e),
        None => Ok((keys, expires)),
    }
}

// ---------------------------------------------------------------------------
// Apply.

/// The writes of one command, collected into one batch at one version.
struct Tx<'a> {
    view: &'a mut dyn StateView,
    batch: WriteBatch,
    version: u64,
    now: u64,
}

impl Tx<'_> {
    fn load(&self, key: &[u8]) -> Result<Option<Meta>> {
        load(&*self.view, key, self.now)
    }

    fn put_meta(&mut self, key: &[u8], meta: &Meta) {
        self.batch
            .put_at(META, &model::meta_key(key), self.version, &meta.encode());
    }

    fn delete_meta(&mut self, key: &[u8]) {
        self.batch
            .delete_at(META, &model::meta_key(key), self.version);
    }

    /// Stores a string, or deletes the key when `expiry_ms` is already past.
    fn put_string(&mut self, key: &[u8], value: Vec<u8>, expiry_ms: u64) {
        if expiry_ms != 0 && expiry_ms < self.now {
            self.delete_meta(key);
        } else {
            self.put_meta(key, &Meta::string(value, expiry_ms));
        }
    }

    fn commit(self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.view.commit(self.batch)
    }
}

/// Evaluates a write at apply time: reads and writes through `view`, all writes
/// in one batch at `version`; deterministic given the same store state and command.
pub fn apply(cmd: &WriteCommand, view: &mut dyn StateView, version: u64) -> Reply {
    match &cmd.op {
        WriteOp::FlushDb => {
            return match view.clear(version) {
                Ok(()) => Reply::ok(),
                Err(e) => storage_error(e),
            };
        }
        WriteOp::Atomic(_) => {}
        WriteOp::Exec { watched, items } => {
            match lock::check(&*view, &cmd.op.keys()) {
                Ok(None) => {}
                Ok(Some(locked)) => return locked,
                Err(e) => return storage_error(e),
            }
            return match apply_exec(watched, items, cmd.now_ms, view, version) {
                Ok(reply) => reply,
                Err(e) => storage_error(e),
            };
        }
        // A key locked by a cross-region write in flight: the proposer resolves the lock
        // and proposes again.
        _ if !view.may_hold_locks() => {}
        op => match lock::check(&*view, &op.keys()) {
            Ok(None) => {}
            Ok(Some(locked)) => return locked,
            Err(e) => return storage_error(e),
        },
    }
    let mut tx = Tx {
        view,
        batch: WriteBatch::new(),
        version,
        now: cmd.now_ms,
    };
    match apply_inner(&cmd.op, &mut tx) {
        Ok(reply) => {
            if reply.is_error() {
                return reply;
            }
            match tx.commit() {
                Ok(()) => reply,
                Err(e) => storage_error(e),
            }
        }
        Err(e) => storage_error(e),
    }
}

/// EXEC: the watched versions, then every item against the block's own writes so far
/// (`store::Overlay`), all written in one batch at `version`.
fn apply_exec(
    watched: &[(Vec<u8>, u64)],
    items: &[ExecItem],
    now: u64,
    view: &mut dyn StateView,
    version: u64,
) -> Result<Reply> {
    for (k, seen) in watched {
        if view.version(META, &model::meta_key(k))?.unwrap_or(0) != *seen {
            return Ok(Reply::NullArray);
        }
    }
    let mut overlay = crate::store::Overlay::new(&*view, version);
    let replies = run_items(items, &mut overlay, now, version)?;
    let batch = overlay.into_batch();
    if !batch.is_empty() {
        view.commit(batch)?;
    }
    Ok(Reply::Array(replies))
}

/// Runs a block's items in order over `overlay` (each sees the writes before it).
fn run_items(
    items: &[ExecItem],
    overlay: &mut crate::store::Overlay,
    now: u64,
    version: u64,
) -> Result<Vec<Reply>> {
    let mut replies = Vec::with_capacity(items.len());
    for item in items {
        replies.push(match item {
            ExecItem::Reply(r) => r.clone(),
            ExecItem::Read(op) => read_inner(op, &*overlay, now)?,
            ExecItem::Write(WriteOp::FlushDb) => {
                overlay.clear(version)?;
                Reply::ok()
            }
            ExecItem::Write(op) => {
                let mut tx = Tx {
                    view: overlay,
                    batch: WriteBatch::new(),
                    version,
                    now,
                };
                let reply = apply_inner(op, &mut tx)?;
                if !reply.is_error() {
                    tx.commit()?;
                }
                reply
            }
        });
    }
    Ok(replies)
}

fn apply_inner(op: &WriteOp, tx: &mut Tx) -> Result<Reply> {
    let now = tx.now;
    Ok(match op {
        WriteOp::Atomic(step) => return atomic::apply(step, tx),
        WriteOp::Exec { .. } => Reply::error("ERR EXEC nested in EXEC"),
        WriteOp::Set {
            key,
            value,
            condition,
            expiry,
            reply,
        } => {
            // A plain SET (no condition, no KEEPTTL, no GET) replaces whatever is there,
            // whatever its type: it needs no read.
            let needs_old = *condition != SetCondition::Always
                || *expiry == ExpiryUpdate::Keep
                || *reply == SetReply::Old;
            let old = if needs_old { tx.load(key)? } else { None };
            let old_value = if *reply == SetReply::Old {
                tri!(string_of(old.clone()))
            } else {
                None
            };
            let found = old.is_some();
            let blocked = match condition {
                SetCondition::Always => false,
                SetCondition::IfAbsent => found,
                SetCondition::IfPresent => !found,
            };
            let not_done = || match reply {
                SetReply::Ok => Reply::Null,
                SetReply::Int => Reply::Int(0),
                SetReply::Old => old_value.clone().map_or(Reply::Null, Reply::Bulk),
            };
            if blocked {
                return Ok(not_done());
            }
            let expiry_ms = match expiry {
                ExpiryUpdate::Keep => old.as_ref().map_or(0, |m| m.expiry_ms),
                ExpiryUpdate::Clear => 0,
                ExpiryUpdate::At(at) => *at,
            };
            tx.put_string(key, value.clone(), expiry_ms);
            match reply {
                SetReply::Ok => Reply::ok(),
                SetReply::Int => Reply::Int(1),
                SetReply::Old => old_value.map_or(Reply::Null, Reply::Bulk),
            }
        }
        WriteOp::GetSet { key, value } => {
            let old = tri!(string_of(tx.load(key)?));
            tx.put_string(key, value.clone(), 0);
            old.map_or(Reply::Null, Reply::Bulk)
        }
        WriteOp::GetDel { key } => match tri!(string_of(tx.load(key)?)) {
            None => Reply::Null,
            Some(v) => {
                tx.delete_meta(key);
                Reply::Bulk(v)
            }
        },
        WriteOp::GetEx { key, expiry } => {
            let Some(meta) = tx.load(key)? else {
                return Ok(Reply::Null);
            };
            let value = tri!(string_of(Some(meta.clone()))).unwrap_or_default();
            match expiry {
                ExpiryUpdate::Keep => {}
                ExpiryUpdate::Clear => {
                    if meta.expiry_ms != 0 {
                        tx.put_string(key, value.clone(), 0);
                    }
                }
                ExpiryUpdate::At(at) => {
                    if *at <= now {
                        tx.delete_meta(key);
                    } else {
                        tx.put_string(key, value.clone(), *at);
                    }
                }
            }
            Reply::Bulk(value)
        }
        WriteOp::MSet {
            pairs,
            if_none_exist,
        } => {
            if *if_none_exist {
                for (k, _) in pairs {
                    if tx.load(k)?.is_some() {
                        return Ok(Reply::Int(0));
                    }
                }
            }
            // The last value of a repeated key wins, as in Redis.
            let mut last: BTreeMap<&[u8], &[u8]> = BTreeMap::new();
            for (k, v) in pairs {
                last.insert(k, v);
            }
            for (k, v) in last {
                tx.put_string(k, v.to_vec(), 0);
            }
            if *if_none_exist {
                Reply::Int(1)
            } else {
                Reply::ok()
            }
        }
        WriteOp::Append { key, value } => {
            let meta = tx.load(key)?;
            let expiry = meta.as_ref().map_or(0, |m| m.expiry_ms);
            let mut current = tri!(string_of(meta)).unwrap_or_default();
            if current.len() + value.len() > MAX_STRING_BYTES {
                return Ok(Reply::error(
                    "ERR string exceeds maximum allowed size (proto-max-bulk-len)",
                ));
            }
            current.extend_from_slice(value);
            let len = current.len() as i64;
            tx.put_string(key, current, expiry);
            Reply::Int(len)
        }
        WriteOp::IncrBy { key, delta } => {
            let meta = tx.load(key)?;
            let expiry = meta.as_ref().map_or(0, |m| m.expiry_ms);
            let old = match tri!(string_of(meta)) {
                None => 0,
                Some(v) => match string2ll(&v) {
                    Some(n) => n,
                    None => return Ok(Reply::error(NOT_INTEGER)),
                },
            };
            let Some(new) = old.checked_add(*delta) else {
                return Ok(Reply::error(OVERFLOW));
            };
            tx.put_string(key, new.to_string().into_bytes(), expiry);
            Reply::Int(new)
        }
        WriteOp::IncrByFloat { key, delta } => {
            let meta = tx.load(key)?;
            let expiry = meta.as_ref().map_or(0, |m| m.expiry_ms);
            let old = match tri!(string_of(meta)) {
                None => LongDouble::ZERO,
                Some(v) => match LongDouble::parse(&v) {
                    Some(n) => n,
                    None => return Ok(Reply::error(NOT_FLOAT)),
                },
            };
            let new = match old.checked_add(*delta) {
                Some(n) if !n.is_infinite() => n,
                _ => return Ok(Reply::error("ERR increment would produce NaN or Infinity")),
            };
            let text = new.to_human().into_bytes();
            tx.put_string(key, text.clone(), expiry);
            Reply::Bulk(text)
        }
        WriteOp::Del { keys } => {
            let mut seen = HashSet::new();
            let mut n = 0;
            for k in keys {
                if seen.insert(k.as_slice()) && tx.load(k)?.is_some() {
                    tx.delete_meta(k);
                    n += 1;
                }
            }
            Reply::Int(n)
        }
        WriteOp::Expire { key, at_ms, flags } => {
            let Some(meta) = tx.load(key)? else {
                return Ok(Reply::Int(0));
            };
            use expire_flags::*;
            let current: i64 = if meta.expiry_ms == 0 {
                -1
            } else {
                meta.expiry_ms as i64
            };
            let when = *at_ms;
            let refused = (flags & NX != 0 && current != -1)
                || (flags & XX != 0 && current == -1)
                || (flags & GT != 0 && (when <= current || current == -1))
                || (flags & LT != 0 && current != -1 && when >= current);
            if refused {
                return Ok(Reply::Int(0));
            }
            if when <= now as i64 {
                tx.delete_meta(key);
            } else {
                let mut meta = meta;
                meta.expiry_ms = when as u64;
                tx.put_meta(key, &meta);
            }
            Reply::Int(1)
        }
        WriteOp::Persist { key } => match tx.load(key)? {
            Some(mut meta) if meta.expiry_ms != 0 => {
                meta.expiry_ms = 0;
                tx.put_meta(key, &meta);
                Reply::Int(1)
            }
            _ => Reply::Int(0),
        },
        WriteOp::FlushDb => Reply::ok(),
        WriteOp::HSet {
            key,
            pairs,
            reply_ok,
        } => {
            let meta = tx.load(key)?;
            let expiry = meta.as_ref().map_or(0, |m| m.expiry_ms);
            let (generation, mut len, existed) = match tri!(hash_of(meta)) {
                Some((g, l)) => (g, l, true),
                None => (tx.version, 0, false),
            };
            let mut last: BTreeMap<&[u8], &[u8]> = BTreeMap::new();
            for (f, v) in pairs {
                last.insert(f, v);
            }
            let mut added = 0i64;
            for (f, v) in last {
                let sk = model::subkey(key, generation, f);
                if !existed || tx.view.get(SUBKEYS, &sk)?.is_none() {
                    added += 1;
                }
                tx.batch.put_at(SUBKEYS, &sk, tx.version, v);
            }
            len += added as u64;
            tx.put_meta(
                key,
                &Meta {
                    expiry_ms: expiry,
                    body: Body::Hash { generation, len },
                },
            );
            if *reply_ok {
                Reply::ok()
            } else {
                Reply::Int(added)
            }
        }
        WriteOp::HDel { key, fields } => {
            let meta = tx.load(key)?;
            let expiry = meta.as_ref().map_or(0, |m| m.expiry_ms);
            let Some((generation, len)) = tri!(hash_of(meta)) else {
                return Ok(Reply::Int(0));
            };
            let mut seen = HashSet::new();
            let mut removed = 0u64;
            for f in fields {
                if !seen.insert(f.as_slice()) {
                    continue;
                }
                let sk = model::subkey(key, generation, f);
                if tx.view.get(SUBKEYS, &sk)?.is_some() {
                    tx.batch.delete_at(SUBKEYS, &sk, tx.version);
                    removed += 1;
                }
            }
            if removed > 0 {
                let len = len.saturating_sub(removed);
                if len == 0 {
                    tx.delete_meta(key);
                } else {
                    tx.put_meta(
                        key,
                        &Meta {
                            expiry_ms: expiry,
                            body: Body::Hash { generation, len },
                        },
                    );
                }
            }
            Reply::Int(removed as i64)
        }
        WriteOp::HIncrBy { key, field, delta } => {
            let meta = tx.load(key)?;
            let expiry = meta.as_ref().map_or(0, |m| m.expiry_ms);
            let (generation, len, existed) = match tri!(hash_of(meta)) {
                Some((g, l)) => (g, l, true),
                None => (tx.version, 0, false),
            };
            let sk = model::subkey(key, generation, field);
            let current = if existed {
                tx.view.get(SUBKEYS, &sk)?
            } else {
                None
            };
            let old = match &current {
                None => 0,
                Some(v) => match string2ll(v) {
                    Some(n) => n,
                    None => return Ok(Reply::error("ERR hash value is not an integer")),
                },
            };
            let Some(new) = old.checked_add(*delta) else {
                return Ok(Reply::error(OVERFLOW));
            };
            tx.batch
                .put_at(SUBKEYS, &sk, tx.version, new.to_string().as_bytes());
            if current.is_none() {
                tx.put_meta(
                    key,
                    &Meta {
                        expiry_ms: expiry,
                        body: Body::Hash {
                            generation,
                            len: len + 1,
                        },
                    },
                );
            }
            Reply::Int(new)
        }
    })
}

/// The type name of a live key, for callers that need it outside a command.
pub fn type_of(view: &dyn ReadView, key: &[u8], now_ms: u64) -> Result<Option<RedisType>> {
    Ok(load(view, key, now_ms)?.map(|m| m.kind()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command;
    use crate::resp::Protocol;
    use crate::store::MemView;
    use proptest::prelude::*;

    fn args(line: &str) -> Vec<Vec<u8>> {
        crate::resp::split_args(line.as_bytes()).unwrap_or_default()
    }

    fn prep(line: &str, now: u64) -> Prepared {
        let a = args(line);
        let cmd = command::find(&a[0]).unwrap_or_else(|| panic!("no command {line}"));
        assert!(cmd.arity_ok(a.len()), "arity {line}");
        prepare(cmd, a, now)
    }

    /// Runs `line` at `now` against `view` with version `v`; the RESP2 reply as text.
    fn run(view: &mut MemView, line: &str, now: u64, v: u64) -> String {
        let reply = match prep(line, now) {
            Prepared::Read(op) => read(&op, view, now),
            Prepared::Write(cmd) => {
                let bytes = cmd.encode();
                let decoded = WriteCommand::decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(decoded, cmd);
                apply(&decoded, view, v)
            }
            Prepared::Reply(r) => r,
        };
        String::from_utf8_lossy(&reply.to_bytes(Protocol::Resp2).unwrap_or_default()).into_owned()
    }

    /// A view whose every read fails with the given engine error.
    struct Failing(fn() -> nokv::Error);

    impl ReadView for Failing {
        fn get(&self, _: nokv::KeySpace, _: &[u8]) -> Result<Option<Vec<u8>>> {
            Err((self.0)().into())
        }
        fn version(&self, _: nokv::KeySpace, _: &[u8]) -> Result<Option<u64>> {
            Err((self.0)().into())
        }
        fn scan(
            &self,
            _: nokv::KeySpace,
            _: &[u8],
            _: Option<&[u8]>,
            _: &mut dyn FnMut(&[u8], &[u8]) -> bool,
        ) -> Result<()> {
            Err((self.0)().into())
        }
    }

    #[test]
    fn try_read_hands_back_reads_that_would_block_and_answers_the_rest() {
        let get = match prep("GET k", 0) {
            Prepared::Read(op) => op,
            _ => panic!("GET is a read"),
        };
        let keys = match prep("KEYS *", 0) {
            Prepared::Read(op) => op,
            _ => panic!("KEYS is a read"),
        };
        let blocked = Failing(|| nokv::Error::WouldBlock("test"));
        assert_eq!(try_read(&get, &blocked, 0), None);
        assert_eq!(try_read(&keys, &blocked, 0), None);
        let broken = Failing(|| nokv::Error::Closed);
        assert!(try_read(&get, &broken, 0).is_some_and(|r| r.is_error()));
        let mut view = MemView::default();
        run(&mut view, "SET k v", 0, 1);
        assert_eq!(try_read(&get, &view, 0), Some(Reply::Bulk(b"v".to_vec())));
    }

    #[test]
    fn relative_expiries_become_absolute_at_propose_time() {
        let at = |line: &str| match prep(line, 1_000_000) {
            Prepared::Write(WriteCommand {
                op: WriteOp::Set { expiry, .. },
                ..
            })
            | Prepared::Write(WriteCommand {
                op: WriteOp::GetEx { expiry, .. },
                ..
            }) => expiry,
            other => panic!("{other:?}"),
        };
        assert_eq!(at("set k v ex 10"), ExpiryUpdate::At(1_010_000));
        assert_eq!(at("set k v px 10"), ExpiryUpdate::At(1_000_010));
        assert_eq!(at("set k v exat 10"), ExpiryUpdate::At(10_000));
        assert_eq!(at("set k v pxat 10"), ExpiryUpdate::At(10));
        assert_eq!(at("set k v keepttl"), ExpiryUpdate::Keep);
        assert_eq!(at("set k v"), ExpiryUpdate::Clear);
        assert_eq!(at("setex k 5 v"), ExpiryUpdate::At(1_005_000));
        assert_eq!(at("psetex k 5 v"), ExpiryUpdate::At(1_000_005));
        assert_eq!(at("getex k persist"), ExpiryUpdate::Clear);
        assert_eq!(at("getex k"), ExpiryUpdate::Keep);
        match prep("expire k -5", 1_000_000) {
            Prepared::Write(WriteCommand {
                op: WriteOp::Expire { at_ms, .. },
                ..
            }) => assert_eq!(at_ms, 995_000),
            other => panic!("{other:?}"),
        }
        match prep("pexpireat k 42", 1_000_000) {
            Prepared::Write(WriteCommand {
                op: WriteOp::Expire { at_ms, .. },
                ..
            }) => assert_eq!(at_ms, 42),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn argument_errors_have_redis_text() {
        let e = |line: &str| match prep(line, 1000) {
            Prepared::Reply(Reply::Error(e)) => e,
            other => panic!("{line}: {other:?}"),
        };
        assert_eq!(e("set k v nx xx"), SYNTAX);
        assert_eq!(
            e("set k v ex 0"),
            "ERR invalid expire time in 'set' command"
        );
        assert_eq!(e("set k v ex x"), NOT_INTEGER);
        assert_eq!(
            e("setex k -1 v"),
            "ERR invalid expire time in 'setex' command"
        );
        assert_eq!(e("getex k persist ex 1"), SYNTAX);
        assert_eq!(e("incrby k x"), NOT_INTEGER);
        assert_eq!(
            e("decrby k -9223372036854775808"),
            "ERR decrement would overflow"
        );
        assert_eq!(e("incrbyfloat k x"), NOT_FLOAT);
        assert_eq!(
            e("mset a b c"),
            "ERR wrong number of arguments for 'mset' command"
        );
        assert_eq!(
            e("hset h f v g"),
            "ERR wrong number of arguments for 'hset' command"
        );
        assert_eq!(
            e("expire k 1 nx xx"),
            "ERR NX and XX, GT or LT options at the same time are not compatible"
        );
        assert_eq!(
            e("expire k 1 gt lt"),
            "ERR GT and LT options at the same time are not compatible"
        );
        assert_eq!(e("expire k 1 zz"), "ERR Unsupported option zz");
        assert_eq!(e("scan x"), "ERR invalid cursor");
        assert_eq!(e("scan 0 count 0"), SYNTAX);
        assert_eq!(e("flushdb now"), SYNTAX);
    }

    #[test]
    fn reply_types_per_command() {
        let mut v = MemView::default();
        let now = 1_000;
        let cases: &[(&str, &str)] = &[
            ("get k", "$-1\r\n"),
            ("set k v", "+OK\r\n"),
            ("get k", "$1\r\nv\r\n"),
            ("set k w get", "$1\r\nv\r\n"),
            ("setnx k x", ":0\r\n"),
            ("set k v nx", "$-1\r\n"),
            ("getset k a", "$1\r\nw\r\n"),
            ("append k bc", ":3\r\n"),
            ("strlen k", ":3\r\n"),
            ("getdel k", "$3\r\nabc\r\n"),
            ("exists k", ":0\r\n"),
            ("incr n", ":1\r\n"),
            ("incrby n 9", ":10\r\n"),
            ("decr n", ":9\r\n"),
            ("decrby n 10", ":-1\r\n"),
            ("incrbyfloat f 1.5", "$3\r\n1.5\r\n"),
            ("mset a 1 b 2", "+OK\r\n"),
            ("mget a b c", "*3\r\n$1\r\n1\r\n$1\r\n2\r\n$-1\r\n"),
            ("msetnx a 1 z 1", ":0\r\n"),
            ("type a", "+string\r\n"),
            ("type nokey", "+none\r\n"),
            ("ttl a", ":-1\r\n"),
            ("ttl nokey", ":-2\r\n"),
            ("expire a 10", ":1\r\n"),
            ("ttl a", ":10\r\n"),
            ("pttl a", ":10000\r\n"),
            ("persist a", ":1\r\n"),
            ("del a b nokey", ":2\r\n"),
            ("hset h f1 1 f2 2", ":2\r\n"),
            ("hget h f1", "$1\r\n1\r\n"),
            ("hmget h f1 nof", "*2\r\n$1\r\n1\r\n$-1\r\n"),
            ("hlen h", ":2\r\n"),
            ("hexists h f2", ":1\r\n"),
            ("hkeys h", "*2\r\n$2\r\nf1\r\n$2\r\nf2\r\n"),
            ("hvals h", "*2\r\n$1\r\n1\r\n$1\r\n2\r\n"),
            (
                "hgetall h",
                "*4\r\n$2\r\nf1\r\n$1\r\n1\r\n$2\r\nf2\r\n$1\r\n2\r\n",
            ),
            ("hincrby h f1 5", ":6\r\n"),
            ("hdel h f1 nof", ":1\r\n"),
            ("type h", "+hash\r\n"),
            (
                "get h",
                "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
            ),
            (
                "incr h",
                "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
            ),
            (
                "hget n f",
                "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
            ),
            (
                "hset n f v",
                "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
            ),
            ("dbsize", ":3\r\n"),
            ("keys h", "*1\r\n$1\r\nh\r\n"),
            ("flushdb", "+OK\r\n"),
            ("dbsize", ":0\r\n"),
        ];
        for (i, (line, want)) in cases.iter().enumerate() {
            assert_eq!(run(&mut v, line, now, 10 + i as u64), *want, "{line}");
        }
    }

    #[test]
    fn expiry_is_judged_at_the_command_time() {
        let mut v = MemView::default();
        run(&mut v, "set k v px 100", 1_000, 1);
        assert_eq!(run(&mut v, "get k", 1_100, 2), "$1\r\nv\r\n");
        assert_eq!(run(&mut v, "get k", 1_101, 3), "$-1\r\n");
        // A write proposed before the expiry still sees the key, whenever it is applied.
        assert_eq!(run(&mut v, "append k w", 1_050, 4), ":2\r\n");
        assert_eq!(run(&mut v, "setnx k x", 1_200, 5), ":1\r\n");
        assert_eq!(run(&mut v, "ttl k", 1_200, 6), ":-1\r\n");
    }

    #[test]
    fn deleted_hash_fields_never_come_back() {
        let mut v = MemView::default();
        run(&mut v, "hset h a 1 b 2", 1, 10);
        run(&mut v, "del h", 1, 11);
        assert_eq!(run(&mut v, "hset h c 3", 1, 12), ":1\r\n");
        assert_eq!(
            run(&mut v, "hgetall h", 1, 13),
            "*2\r\n$1\r\nc\r\n$1\r\n3\r\n"
        );
        assert_eq!(run(&mut v, "hlen h", 1, 14), ":1\r\n");
        // Old generation's fields remain as garbage until collected.
        let subkeys = v.map.keys().filter(|k| k[1] == model::SUBKEY_CF).count();
        assert_eq!(subkeys, 3);
        // Expired hashes behave like deleted ones.
        run(&mut v, "pexpire h 5", 1, 15);
        assert_eq!(run(&mut v, "hget h c", 100, 16), "$-1\r\n");
        assert_eq!(run(&mut v, "hset h d 4", 100, 17), ":1\r\n");
        assert_eq!(run(&mut v, "hkeys h", 100, 18), "*1\r\n$1\r\nd\r\n");
    }

    #[test]
    fn one_batch_per_command() {
        let mut v = MemView::default();
        run(&mut v, "hset h a 1 b 2 c 3", 1, 10);
        run(&mut v, "mset x 1 y 2 z 3", 1, 11);
        run(&mut v, "get x", 1, 12);
        run(&mut v, "set x 1 nx", 1, 13);
        assert_eq!(v.commits, 2, "reads and refused writes commit nothing");
    }

    fn vocabulary() -> impl Strategy<Value = String> {
        let key = prop_oneof![Just("a"), Just("b"), Just("h")];
        let field = prop_oneof![Just("f"), Just("g")];
        (0usize..14, key, field, 0i64..5).prop_map(|(op, k, f, n)| match op {
            0 => format!("set {k} {n}"),
            1 => format!("incrby {k} {n}"),
            2 => format!("append {k} x"),
            3 => format!("del {k}"),
            4 => format!("hset {k} {f} {n}"),
            5 => format!("hincrby {k} {f} {n}"),
            6 => format!("hdel {k} {f}"),
            7 => format!("pexpire {k} {n}"),
            8 => format!("set {k} v px {}", n + 1),
            9 => format!("getdel {k}"),
            10 => format!("incrbyfloat {k} 0.{n}"),
            11 => format!("persist {k}"),
            12 => format!("msetnx {k} 1 c 2"),
            _ => format!("getex {k} px {}", n + 1),
        })
    }

    proptest! {
        /// Replicas applying the same log from the same state end identical, whatever
        /// their own clocks say: apply judges time by the command's `now_ms` only.
        #[test]
        fn replicas_applying_one_log_agree(log in proptest::collection::vec((vocabulary(), 0u64..4), 1..40)) {
            let mut r1 = MemView::default();
            let mut r2 = MemView::default();
            let mut now = 1_000u64;
            let mut cmds = Vec::new();
            for (line, dt) in &log {
                now += dt;
                if let Prepared::Write(cmd) = prep(line, now) {
                    cmds.push(cmd.encode());
                }
            }
            let mut replies = (Vec::new(), Vec::new());
            for (i, bytes) in cmds.iter().enumerate() {
                let cmd = WriteCommand::decode(bytes).unwrap_or_else(|e| panic!("{e}"));
                replies.0.push(apply(&cmd, &mut r1, 100 + i as u64));
                replies.1.push(apply(&cmd, &mut r2, 100 + i as u64));
            }
            prop_assert_eq!(replies.0, replies.1);
            prop_assert_eq!(&r1.map, &r2.map);
        }
    }
}

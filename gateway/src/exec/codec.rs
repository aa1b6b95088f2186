//! A compact, versioned binary codec for [`WriteCommand`] (it travels in Raft log entries),
//! and for [`ReadOp`] and [`Reply`] (a store forwards a region's read or write to the
//! region's leader on another store and gets the reply back).
//!
//! Layout: `format u8 (=1) | now_ms varint | op tag u8 | fields`, where byte
//! strings are `varint len | bytes`, lists are `varint count | items`, integers
//! are zig-zag varints and booleans/enums one byte. Decoding checks every
//! length against the bytes left, rejects unknown tags and trailing bytes.

use super::{
    AtomicAction, AtomicStep, ExecItem, ExpiryUpdate, ReadOp, ScanArgs, SetCondition, SetReply,
    WriteCommand, WriteOp,
};
use crate::error::{Error, Result};
use crate::lock::Change;
use crate::numeric::LongDouble;
use crate::resp::{Reply, ScanPage};

const FORMAT: u8 = 1;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_i64(out: &mut Vec<u8>, v: i64) {
    put_varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn put_list(out: &mut Vec<u8>, items: &[Vec<u8>]) {
    put_varint(out, items.len() as u64);
    for i in items {
        put_bytes(out, i);
    }
}

fn put_pairs(out: &mut Vec<u8>, pairs: &[(Vec<u8>, Vec<u8>)]) {
    put_varint(out, pairs.len() as u64);
    for (k, v) in pairs {
        put_bytes(out, k);
        put_bytes(out, v);
    }
}

fn put_expiry(out: &mut Vec<u8>, e: ExpiryUpdate) {
    match e {
        ExpiryUpdate::Keep => out.push(0),
        ExpiryUpdate::Clear => out.push(1),
        ExpiryUpdate::At(at) => {
            out.push(2);
            put_varint(out, at);
        }
    }
}

impl WriteCommand {
    /// Encodes the command for the log.
    pub fn encode(&self) -> Vec<u8> {
        // Sized up front for the common commands: growing the buffer would copy it.
        let hint = match &self.op {
            WriteOp::Set { key, value, .. } | WriteOp::GetSet { key, value } => {
                key.len() + value.len() + 32
            }
            _ => 64,
        };
        let mut out = Vec::with_capacity(hint);
        out.push(FORMAT);
        put_varint(&mut out, self.now_ms);
        match &self.op {
            WriteOp::Set {
                key,
                value,
                condition,
                expiry,
                reply,
            } => {
                out.push(1);
                put_bytes(&mut out, key);
                put_bytes(&mut out, value);
                out.push(match condition {
                    SetCondition::Always => 0,
                    SetCondition::IfAbsent => 1,
                    SetCondition::IfPresent => 2,
                });
                put_expiry(&mut out, *expiry);
                out.push(match reply {
                    SetReply::Ok => 0,
                    SetReply::Int => 1,
                    SetReply::Old => 2,
                });
            }
            WriteOp::GetSet { key, value } => {
                out.push(2);
                put_bytes(&mut out, key);
                put_bytes(&mut out, value);
            }
            WriteOp::GetDel { key } => {
                out.push(3);
                put_bytes(&mut out, key);
            }
            WriteOp::GetEx { key, expiry } => {
                out.push(4);
                put_bytes(&mut out, key);
                put_expiry(&mut out, *expiry);
            }
            WriteOp::MSet {
                pairs,
                if_none_exist,
            } => {
                out.push(5);
                put_pairs(&mut out, pairs);
                out.push(*if_none_exist as u8);
            }
            WriteOp::Append { key, value } => {
                out.push(6);
                put_bytes(&mut out, key);
                put_bytes(&mut out, value);
            }
            WriteOp::IncrBy { key, delta } => {
                out.push(7);
                put_bytes(&mut out, key);
                put_i64(&mut out, *delta);
            }
            WriteOp::IncrByFloat { key, delta } => {
                out.push(8);
                put_bytes(&mut out, key);
                out.extend_from_slice(&delta.to_bytes());
            }
            WriteOp::Del { keys } => {
                out.push(9);
                put_list(&mut out, keys);
            }
            WriteOp::Expire { key, at_ms, flags } => {
                out.push(10);
                put_bytes(&mut out, key);
                put_i64(&mut out, *at_ms);
                out.push(*flags);
            }
            WriteOp::Persist { key } => {
                out.push(11);
                put_bytes(&mut out, key);
            }
            WriteOp::FlushDb => out.push(12),
            WriteOp::HSet {
                key,
                pairs,
                reply_ok,
            } => {
                out.push(13);
                put_bytes(&mut out, key);
                put_pairs(&mut out, pairs);
                out.push(*reply_ok as u8);
            }
            WriteOp::HDel { key, fields } => {
                out.push(14);
                put_bytes(&mut out, key);
                put_list(&mut out, fields);
            }
            WriteOp::HIncrBy { key, field, delta } => {
                out.push(15);
                put_bytes(&mut out, key);
                put_bytes(&mut out, field);
                put_i64(&mut out, *delta);
            }
            WriteOp::Atomic(step) => {
                out.push(16);
                out.extend_from_slice(&step.txn);
                put_bytes(&mut out, &step.primary);
                match &step.action {
                    AtomicAction::Lock {
                        deadline_ms,
                        changes,
                    } => {
                        out.push(1);
                        put_varint(&mut out, *deadline_ms);
                        put_varint(&mut out, changes.len() as u64);
                        for (k, c) in changes {
                            put_bytes(&mut out, k);
                            match c {
                                Change::Delete => out.push(0),
                                Change::Put(v) => {
                                    out.push(1);
                                    put_bytes(&mut out, v);
                                }
                                Change::Keep => out.push(2),
                                Change::Writes(writes) => {
                                    out.push(3);
                                    put_varint(&mut out, writes.len() as u64);
                                    for (k, v) in writes {
                                        put_bytes(&mut out, k);
                                        put_opt(&mut out, v);
                                    }
                                }
                            }
                        }
                    }
                    AtomicAction::LockExec {
                        deadline_ms,
                        watched,
                        items,
                        positions,
                    } => {
                        out.push(6);
                        put_varint(&mut out, *deadline_ms);
                        put_exec(&mut out, self.now_ms, watched, items);
                        put_varint(&mut out, positions.len() as u64);
                        for p in positions {
                            put_varint(&mut out, u64::from(*p));
                        }
                    }
                    AtomicAction::Commit { keys } => {
                        out.push(2);
                        put_list(&mut out, keys);
                    }
                    AtomicAction::Rollback { keys } => {
                        out.push(3);
                        put_list(&mut out, keys);
                    }
                    AtomicAction::Check => out.push(4),
                    AtomicAction::Forget => out.push(5),
                }
            }
            WriteOp::Exec { watched, items } => {
                out.push(17);
                put_exec(&mut out, self.now_ms, watched, items);
            }
        }
        out
    }

    /// Decodes [`WriteCommand::encode`]'s output.
    pub fn decode(buf: &[u8]) -> Result<WriteCommand> {
        let mut r = Reader { buf, pos: 0 };
        let format = r.u8()?;
        if format != FORMAT {
            return Err(Error::Codec(format!(
                "unknown WriteCommand format {format}"
            )));
        }
        let now_ms = r.varint()?;
        let tag = r.u8()?;
        let op = match tag {
            1 => WriteOp::Set {
                key: r.bytes()?,
                value: r.bytes()?,
                condition: match r.u8()? {
                    0 => SetCondition::Always,
                    1 => SetCondition::IfAbsent,
                    2 => SetCondition::IfPresent,
                    t => return Err(Error::Codec(format!("bad SET condition {t}"))),
                },
                expiry: r.expiry()?,
                reply: match r.u8()? {
                    0 => SetReply::Ok,
                    1 => SetReply::Int,
                    2 => SetReply::Old,
                    t => return Err(Error::Codec(format!("bad SET reply {t}"))),
                },
            },
            2 => WriteOp::GetSet {
                key: r.bytes()?,
                value: r.bytes()?,
            },
            3 => WriteOp::GetDel { key: r.bytes()? },
            4 => WriteOp::GetEx {
                key: r.bytes()?,
                expiry: r.expiry()?,
            },
            5 => WriteOp::MSet {
                pairs: r.pairs()?,
                if_none_exist: r.bool()?,
            },
            6 => WriteOp::Append {
                key: r.bytes()?,
                value: r.bytes()?,
            },
            7 => WriteOp::IncrBy {
                key: r.bytes()?,
                delta: r.i64()?,
            },
            8 => {
                let key = r.bytes()?;
                let raw = r.take(11)?;
                let mut b = [0u8; 11];
                b.copy_from_slice(raw);
                let delta = LongDouble::from_bytes(&b)
                    .ok_or_else(|| Error::Codec("bad long double".to_string()))?;
                WriteOp::IncrByFloat { key, delta }
            }
            9 => WriteOp::Del { keys: r.list()? },
            10 => WriteOp::Expire {
                key: r.bytes()?,
                at_ms: r.i64()?,
                flags: r.u8()?,
            },
            11 => WriteOp::Persist { key: r.bytes()? },
            12 => WriteOp::FlushDb,
            13 => WriteOp::HSet {
                key: r.bytes()?,
                pairs: r.pairs()?,
                reply_ok: r.bool()?,
            },
            14 => WriteOp::HDel {
                key: r.bytes()?,
                fields: r.list()?,
            },
            15 => WriteOp::HIncrBy {
                key: r.bytes()?,
                field: r.bytes()?,
                delta: r.i64()?,
            },
            16 => {
                let mut txn = [0u8; 16];
                txn.copy_from_slice(r.take(16)?);
                let primary = r.bytes()?;
                let action = match r.u8()? {
                    1 => {
                        let deadline_ms = r.varint()?;
                        // Every change takes at least two bytes: bounded by the bytes left.
                        let n = r.len()?;
                        let mut changes = Vec::with_capacity(n);
                        for _ in 0..n {
                            let k = r.bytes()?;
                            let c = match r.u8()? {
                                0 => Change::Delete,
                                1 => Change::Put(r.bytes()?),
                                2 => Change::Keep,
                                3 => {
                                    let n = r.len()?;
                                    let mut writes = Vec::with_capacity(n);
                                    for _ in 0..n {
                                        writes.push((r.bytes()?, r.opt()?));
                                    }
                                    Change::Writes(writes)
                                }
                                t => return Err(Error::Codec(format!("bad change tag {t}"))),
                            };
                            changes.push((k, c));
                        }
                        AtomicAction::Lock {
                            deadline_ms,
                            changes,
                        }
                    }
                    2 => AtomicAction::Commit { keys: r.list()? },
                    3 => AtomicAction::Rollback { keys: r.list()? },
                    4 => AtomicAction::Check,
                    5 => AtomicAction::Forget,
                    6 => {
                        let deadline_ms = r.varint()?;
                        let (watched, items) = r.exec()?;
                        let n = r.len()?;
                        let mut positions = Vec::with_capacity(n);
                        for _ in 0..n {
                            let p = r.varint()?;
                            positions.push(u32::try_from(p).map_err(|_| {
                                Error::Codec(format!("item position {p} out of range"))
                            })?);
                        }
                        AtomicAction::LockExec {
                            deadline_ms,
                            watched,
                            items,
                            positions,
                        }
                    }
                    t => return Err(Error::Codec(format!("unknown atomic step {t}"))),
                };
                WriteOp::Atomic(AtomicStep {
                    txn,
                    primary,
                    action,
                })
            }
            17 => {
                let (watched, items) = r.exec()?;
                WriteOp::Exec { watched, items }
            }
            t => return Err(Error::Codec(format!("unknown WriteCommand op {t}"))),
        };
        if r.pos != buf.len() {
            return Err(Error::Codec(format!(
                "{} trailing bytes after WriteCommand",
                buf.len() - r.pos
            )));
        }
        Ok(WriteCommand { now_ms, op })
    }
}

/// Deepest nesting of arrays, maps and sets [`Reply::decode`] accepts.
pub const MAX_REPLY_DEPTH: usize = 32;

/// A MULTI block: watched keys with versions, then the items (each nested in its own
/// encoding: a `ReadOp`, a `WriteCommand` at `now_ms`, or a `Reply`).
fn put_exec(out: &mut Vec<u8>, now_ms: u64, watched: &[(Vec<u8>, u64)], items: &[ExecItem]) {
    put_varint(out, watched.len() as u64);
    for (k, v) in watched {
        put_bytes(out, k);
        put_varint(out, *v);
    }
    put_varint(out, items.len() as u64);
    for item in items {
        match item {
            ExecItem::Read(op) => {
                out.push(1);
                put_bytes(out, &op.encode());
            }
            ExecItem::Write(op) => {
                out.push(2);
                let cmd = WriteCommand {
                    now_ms,
                    op: op.clone(),
                };
                put_bytes(out, &cmd.encode());
            }
            ExecItem::Reply(r) => {
                out.push(3);
                put_bytes(out, &r.to_binary());
            }
        }
    }
}

fn put_opt(out: &mut Vec<u8>, b: &Option<Vec<u8>>) {
    match b {
        None => out.push(0),
        Some(b) => {
            out.push(1);
            put_bytes(out, b);
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_scan_args(out: &mut Vec<u8>, a: &ScanArgs) {
    put_varint(out, a.cursor);
    put_opt(out, &a.resume);
    put_opt(out, &a.pattern);
    put_varint(out, a.count);
    put_opt(out, &a.kind);
    put_opt(out, &a.invalid.as_ref().map(|s| s.as_bytes().to_vec()));
}

impl ReadOp {
    /// Encodes the read for a store that leads its region.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        out.push(FORMAT);
        match self {
            ReadOp::Get(k) => {
                out.push(1);
                put_bytes(&mut out, k);
            }
            ReadOp::Strlen(k) => {
                out.push(2);
                put_bytes(&mut out, k);
            }
            ReadOp::MGet(keys) => {
                out.push(3);
                put_list(&mut out, keys);
            }
            ReadOp::Exists(keys) => {
                out.push(4);
                put_list(&mut out, keys);
            }
            ReadOp::Type(k) => {
                out.push(5);
                put_bytes(&mut out, k);
            }
            ReadOp::Ttl { key, millis } => {
                out.push(6);
                put_bytes(&mut out, key);
                out.push(u8::from(*millis));
            }
            ReadOp::HGet(k, f) => {
                out.push(7);
                put_bytes(&mut out, k);
                put_bytes(&mut out, f);
            }
            ReadOp::HMGet(k, fields) => {
                out.push(8);
                put_bytes(&mut out, k);
                put_list(&mut out, fields);
            }
            ReadOp::HGetAll(k) => {
                out.push(9);
                put_bytes(&mut out, k);
            }
            ReadOp::HLen(k) => {
                out.push(10);
                put_bytes(&mut out, k);
            }
            ReadOp::HExists(k, f) => {
                out.push(11);
                put_bytes(&mut out, k);
                put_bytes(&mut out, f);
            }
            ReadOp::HKeys(k) => {
                out.push(12);
                put_bytes(&mut out, k);
            }
            ReadOp::HVals(k) => {
                out.push(13);
                put_bytes(&mut out, k);
            }
            ReadOp::Scan(a) => {
                out.push(14);
                put_scan_args(&mut out, a);
            }
            ReadOp::HScan(k, a) => {
                out.push(15);
                put_bytes(&mut out, k);
                put_scan_args(&mut out, a);
            }
            ReadOp::Keys(p) => {
                out.push(16);
                put_bytes(&mut out, p);
            }
            ReadOp::DbSize => out.push(17),
            ReadOp::Info { text, keyspace } => {
                out.push(18);
                put_str(&mut out, text);
                out.push(u8::from(*keyspace));
            }
            ReadOp::Versions(keys) => {
                out.push(19);
                put_list(&mut out, keys);
            }
        }
        out
    }

    /// Decodes [`ReadOp::encode`]'s output.
    pub fn decode(buf: &[u8]) -> Result<ReadOp> {
        let mut r = Reader { buf, pos: 0 };
        let format = r.u8()?;
        if format != FORMAT {
            return Err(Error::Codec(format!("unknown ReadOp format {format}")));
        }
        let op = match r.u8()? {
            1 => ReadOp::Get(r.bytes()?),
            2 => ReadOp::Strlen(r.bytes()?),
            3 => ReadOp::MGet(r.list()?),
            4 => ReadOp::Exists(r.list()?),
            5 => ReadOp::Type(r.bytes()?),
            6 => ReadOp::Ttl {
                key: r.bytes()?,
                millis: r.bool()?,
            },
            7 => ReadOp::HGet(r.bytes()?, r.bytes()?),
            8 => ReadOp::HMGet(r.bytes()?, r.list()?),
            9 => ReadOp::HGetAll(r.bytes()?),
            10 => ReadOp::HLen(r.bytes()?),
            11 => ReadOp::HExists(r.bytes()?, r.bytes()?),
            12 => ReadOp::HKeys(r.bytes()?),
            13 => ReadOp::HVals(r.bytes()?),
            14 => ReadOp::Scan(r.scan_args()?),
            15 => ReadOp::HScan(r.bytes()?, r.scan_args()?),
            16 => ReadOp::Keys(r.bytes()?),
            17 => ReadOp::DbSize,
            18 => ReadOp::Info {
                text: r.string()?,
                keyspace: r.bool()?,
            },
            19 => ReadOp::Versions(r.list()?),
            t => return Err(Error::Codec(format!("unknown ReadOp {t}"))),
        };
        r.end("ReadOp")?;
        Ok(op)
    }
}

fn put_reply(out: &mut Vec<u8>, reply: &Reply) {
    let put_all = |out: &mut Vec<u8>, items: &[Reply]| {
        put_varint(out, items.len() as u64);
        for i in items {
            put_reply(out, i);
        }
    };
    match reply {
        Reply::Simple(s) => {
            out.push(1);
            put_str(out, s);
        }
        Reply::Error(s) => {
            out.push(2);
            put_str(out, s);
        }
        Reply::Int(i) => {
            out.push(3);
            put_i64(out, *i);
        }
        Reply::Bulk(b) => {
            out.push(4);
            put_bytes(out, b);
        }
        Reply::Null => out.push(5),
        Reply::NullArray => out.push(11),
        Reply::Array(items) => {
            out.push(6);
            put_all(out, items);
        }
        Reply::Map(pairs) => {
            out.push(7);
            put_varint(out, pairs.len() as u64);
            for (k, v) in pairs {
                put_reply(out, k);
                put_reply(out, v);
            }
        }
        Reply::Verbatim(b) => {
            out.push(8);
            put_bytes(out, b);
        }
        Reply::Set(items) => {
            out.push(9);
            put_all(out, items);
        }
        Reply::Scan(page) => {
            out.push(10);
            put_opt(out, &page.next);
            put_all(out, &page.items);
        }
    }
}

impl Reply {
    /// Encodes the reply for the store that forwarded its command (binary, not RESP).
    pub fn to_binary(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        out.push(FORMAT);
        put_reply(&mut out, self);
        out
    }

    /// Decodes [`Reply::to_binary`]'s output (nesting at most [`MAX_REPLY_DEPTH`] deep).
    pub fn from_binary(buf: &[u8]) -> Result<Reply> {
        let mut r = Reader { buf, pos: 0 };
        let format = r.u8()?;
        if format != FORMAT {
            return Err(Error::Codec(format!("unknown Reply format {format}")));
        }
        let reply = r.reply(0)?;
        r.end("Reply")?;
        Ok(reply)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() - self.pos < n {
            return Err(Error::Codec(format!(
                "truncated: need {n} bytes at offset {}",
                self.pos
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn bool(&mut self) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(Error::Codec(format!("bad bool {b}"))),
        }
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Error::Codec("varint longer than 10 bytes".to_string()))
    }

    fn i64(&mut self) -> Result<i64> {
        let z = self.varint()?;
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    fn len(&mut self) -> Result<usize> {
        let n = self.varint()?;
        if n > (self.buf.len() - self.pos) as u64 {
            return Err(Error::Codec(format!("length {n} exceeds the bytes left")));
        }
        Ok(n as usize)
    }

    fn bytes(&mut self) -> Result<Vec<u8>> {
        let n = self.len()?;
        Ok(self.take(n)?.to_vec())
    }

    fn list(&mut self) -> Result<Vec<Vec<u8>>> {
        // Every item takes at least one byte, so the count is bounded by the bytes left.
        let n = self.len()?;
        (0..n).map(|_| self.bytes()).collect()
    }

    /// [`put_exec`]'s output: nested blocks are refused.
    #[allow(clippy::type_complexity)]
    fn exec(&mut self) -> Result<(Vec<(Vec<u8>, u64)>, Vec<ExecItem>)> {
        // Every watched key and item takes at least two bytes: bounded by the bytes left.
        let n = self.len()?;
        let mut watched = Vec::with_capacity(n);
        for _ in 0..n {
            watched.push((self.bytes()?, self.varint()?));
        }
        let n = self.len()?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            let tag = self.u8()?;
            let raw = self.bytes()?;
            items.push(match tag {
                1 => ExecItem::Read(ReadOp::decode(&raw)?),
                2 => match WriteCommand::decode(&raw)?.op {
                    WriteOp::Exec { .. } | WriteOp::Atomic(_) => {
                        return Err(Error::Codec("a block nested in a block".to_string()))
                    }
                    op => ExecItem::Write(op),
                },
                3 => ExecItem::Reply(Reply::from_binary(&raw)?),
                t => return Err(Error::Codec(format!("unknown EXEC item {t}"))),
            });
        }
        Ok((watched, items))
    }

    fn pairs(&mut self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let n = self.len()?;
        (0..n).map(|_| Ok((self.bytes()?, self.bytes()?))).collect()
    }

    fn opt(&mut self) -> Result<Option<Vec<u8>>> {
        Ok(if self.bool()? {
            Some(self.bytes()?)
        } else {
            None
        })
    }

    fn string(&mut self) -> Result<String> {
        String::from_utf8(self.bytes()?).map_err(|_| Error::Codec("text is not UTF-8".to_string()))
    }

    fn scan_args(&mut self) -> Result<ScanArgs> {
        Ok(ScanArgs {
            cursor: self.varint()?,
            resume: self.opt()?,
            pattern: self.opt()?,
            count: self.varint()?,
            kind: self.opt()?,
            invalid: match self.opt()? {
                None => None,
                Some(b) => Some(
                    String::from_utf8(b)
                        .map_err(|_| Error::Codec("text is not UTF-8".to_string()))?,
                ),
            },
        })
    }

    fn replies(&mut self, depth: usize) -> Result<Vec<Reply>> {
        // Every reply takes at least one byte, so the count is bounded by the bytes left.
        let n = self.len()?;
        (0..n).map(|_| self.reply(depth + 1)).collect()
    }

    fn reply(&mut self, depth: usize) -> Result<Reply> {
        if depth > MAX_REPLY_DEPTH {
            return Err(Error::Codec(format!(
                "reply nested deeper than {MAX_REPLY_DEPTH}"
            )));
        }
        Ok(match self.u8()? {
            1 => Reply::Simple(self.string()?),
            2 => Reply::Error(self.string()?),
            3 => Reply::Int(self.i64()?),
            4 => Reply::Bulk(self.bytes()?),
            5 => Reply::Null,
            11 => Reply::NullArray,
            6 => Reply::Array(self.replies(depth)?),
            7 => {
                let n = self.len()?;
                let mut pairs = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    pairs.push((self.reply(depth + 1)?, self.reply(depth + 1)?));
                }
                Reply::Map(pairs)
            }
            8 => Reply::Verbatim(self.bytes()?),
            9 => Reply::Set(self.replies(depth)?),
            10 => Reply::Scan(ScanPage {
                next: self.opt()?,
                items: self.replies(depth)?,
            }),
            t => return Err(Error::Codec(format!("unknown Reply tag {t}"))),
        })
    }

    /// Fails unless every byte was read.
    fn end(&self, what: &str) -> Result<()> {
        if self.pos != self.buf.len() {
            return Err(Error::Codec(format!(
                "{} trailing bytes after {what}",
                self.buf.len() - self.pos
            )));
        }
        Ok(())
    }

    fn expiry(&mut self) -> Result<ExpiryUpdate> {
        Ok(match self.u8()? {
            0 => ExpiryUpdate::Keep,
            1 => ExpiryUpdate::Clear,
            2 => ExpiryUpdate::At(self.varint()?),
            t => return Err(Error::Codec(format!("bad expiry tag {t}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..12)
    }

    fn expiry() -> impl Strategy<Value = ExpiryUpdate> {
        prop_oneof![
            Just(ExpiryUpdate::Keep),
            Just(ExpiryUpdate::Clear),
            any::<u64>().prop_map(ExpiryUpdate::At)
        ]
    }

    fn pairs() -> impl Strategy<Value = Vec<(Vec<u8>, Vec<u8>)>> {
        proptest::collection::vec((bytes(), bytes()), 0..4)
    }

    fn op() -> impl Strategy<Value = WriteOp> {
        prop_oneof![
            (bytes(), bytes(), 0u8..3, expiry(), 0u8..3).prop_map(|(key, value, c, expiry, r)| {
                WriteOp::Set {
                    key,
                    value,
                    condition: [
                        SetCondition::Always,
                        SetCondition::IfAbsent,
                        SetCondition::IfPresent,
                    ][c as usize],
                    expiry,
                    reply: [SetReply::Ok, SetReply::Int, SetReply::Old][r as usize],
                }
            }),
            (bytes(), bytes()).prop_map(|(key, value)| WriteOp::GetSet { key, value }),
            bytes().prop_map(|key| WriteOp::GetDel { key }),
            (bytes(), expiry()).prop_map(|(key, expiry)| WriteOp::GetEx { key, expiry }),
            (pairs(), any::<bool>()).prop_map(|(pairs, if_none_exist)| WriteOp::MSet {
                pairs,
                if_none_exist
            }),
            (bytes(), bytes()).prop_map(|(key, value)| WriteOp::Append { key, value }),
            (bytes(), any::<i64>()).prop_map(|(key, delta)| WriteOp::IncrBy { key, delta }),
            (bytes(), "-?[0-9]{1,6}\\.[0-9]{1,6}").prop_map(|(key, d)| WriteOp::IncrByFloat {
                key,
                delta: LongDouble::parse(d.as_bytes()).unwrap_or(LongDouble::ZERO),
            }),
            proptest::collection::vec(bytes(), 0..4).prop_map(|keys| WriteOp::Del { keys }),
            (bytes(), any::<i64>(), any::<u8>()).prop_map(|(key, at_ms, flags)| WriteOp::Expire {
                key,
                at_ms,
                flags
            }),
            bytes().prop_map(|key| WriteOp::Persist { key }),
            Just(WriteOp::FlushDb),
            (bytes(), pairs(), any::<bool>()).prop_map(|(key, pairs, reply_ok)| WriteOp::HSet {
                key,
                pairs,
                reply_ok
            }),
            (bytes(), proptest::collection::vec(bytes(), 0..4))
                .prop_map(|(key, fields)| WriteOp::HDel { key, fields }),
            (bytes(), bytes(), any::<i64>()).prop_map(|(key, field, delta)| WriteOp::HIncrBy {
                key,
                field,
                delta
            }),
            (any::<[u8; 16]>(), bytes(), atomic_action()).prop_map(|(txn, primary, action)| {
                WriteOp::Atomic(AtomicStep {
                    txn,
                    primary,
                    action,
                })
            }),
        ]
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            Just(Change::Delete),
            Just(Change::Keep),
            bytes().prop_map(Change::Put),
            proptest::collection::vec((bytes(), proptest::option::of(bytes())), 0..3)
                .prop_map(Change::Writes),
        ]
    }

    fn atomic_action() -> impl Strategy<Value = AtomicAction> {
        let keys = || proptest::collection::vec(bytes(), 0..4);
        prop_oneof![
            (
                any::<u64>(),
                proptest::collection::vec((bytes(), change()), 0..4)
            )
                .prop_map(|(deadline_ms, changes)| AtomicAction::Lock {
                    deadline_ms,
                    changes
                }),
            keys().prop_map(|keys| AtomicAction::Commit { keys }),
            keys().prop_map(|keys| AtomicAction::Rollback { keys }),
            Just(AtomicAction::Check),
            Just(AtomicAction::Forget),
            (
                any::<u64>(),
                proptest::collection::vec((bytes(), any::<u64>()), 0..3),
                proptest::collection::vec(bytes(), 0..3),
                proptest::collection::vec(any::<u32>(), 0..3)
            )
                .prop_map(|(deadline_ms, watched, keys, positions)| {
                    AtomicAction::LockExec {
                        deadline_ms,
                        watched,
                        items: keys
                            .into_iter()
                            .map(|k| ExecItem::Read(ReadOp::Get(k)))
                            .collect(),
                        positions,
                    }
                }),
        ]
    }

    proptest! {
        #[test]
        fn write_commands_round_trip(now_ms in any::<u64>(), op in op()) {
            let cmd = WriteCommand { now_ms, op };
            let bytes = cmd.encode();
            prop_assert_eq!(WriteCommand::decode(&bytes).unwrap(), cmd);
        }

        #[test]
        fn truncated_or_extended_input_is_refused(now_ms in any::<u64>(), op in op(), cut in any::<prop::sample::Index>()) {
            let bytes = WriteCommand { now_ms, op }.encode();
            let n = cut.index(bytes.len());
            prop_assert!(WriteCommand::decode(&bytes[..n]).is_err());
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert!(WriteCommand::decode(&longer).is_err());
        }

        #[test]
        fn garbage_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = WriteCommand::decode(&raw);
            let _ = ReadOp::decode(&raw);
            let _ = Reply::from_binary(&raw);
        }

        #[test]
        fn reads_round_trip_and_cuts_are_refused(op in read_op(), cut in any::<prop::sample::Index>()) {
            let bytes = op.encode();
            prop_assert_eq!(ReadOp::decode(&bytes).unwrap(), op);
            prop_assert!(ReadOp::decode(&bytes[..cut.index(bytes.len())]).is_err());
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert!(ReadOp::decode(&longer).is_err());
        }

        #[test]
        fn replies_round_trip_and_cuts_are_refused(reply in reply(), cut in any::<prop::sample::Index>()) {
            let bytes = reply.to_binary();
            prop_assert_eq!(Reply::from_binary(&bytes).unwrap(), reply);
            prop_assert!(Reply::from_binary(&bytes[..cut.index(bytes.len())]).is_err());
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert!(Reply::from_binary(&longer).is_err());
        }
    }

    fn opt_bytes() -> impl Strategy<Value = Option<Vec<u8>>> {
        proptest::option::of(bytes())
    }

    fn scan_args() -> impl Strategy<Value = ScanArgs> {
        (
            any::<u64>(),
            opt_bytes(),
            opt_bytes(),
            any::<u64>(),
            opt_bytes(),
            proptest::option::of("[a-z ]{0,8}"),
        )
            .prop_map(|(cursor, resume, pattern, count, kind, invalid)| ScanArgs {
                cursor,
                resume,
                pattern,
                count,
                kind,
                invalid,
            })
    }

    fn read_op() -> impl Strategy<Value = ReadOp> {
        let list = || proptest::collection::vec(bytes(), 0..4);
        prop_oneof![
            bytes().prop_map(ReadOp::Get),
            bytes().prop_map(ReadOp::Strlen),
            list().prop_map(ReadOp::MGet),
            list().prop_map(ReadOp::Exists),
            bytes().prop_map(ReadOp::Type),
            (bytes(), any::<bool>()).prop_map(|(key, millis)| ReadOp::Ttl { key, millis }),
            (bytes(), bytes()).prop_map(|(k, f)| ReadOp::HGet(k, f)),
            (bytes(), list()).prop_map(|(k, f)| ReadOp::HMGet(k, f)),
            bytes().prop_map(ReadOp::HGetAll),
            bytes().prop_map(ReadOp::HLen),
            (bytes(), bytes()).prop_map(|(k, f)| ReadOp::HExists(k, f)),
            bytes().prop_map(ReadOp::HKeys),
            bytes().prop_map(ReadOp::HVals),
            scan_args().prop_map(ReadOp::Scan),
            (bytes(), scan_args()).prop_map(|(k, a)| ReadOp::HScan(k, a)),
            bytes().prop_map(ReadOp::Keys),
            Just(ReadOp::DbSize),
            ("[ -~]{0,16}", any::<bool>())
                .prop_map(|(text, keyspace)| ReadOp::Info { text, keyspace }),
        ]
    }

    fn reply() -> impl Strategy<Value = Reply> {
        let leaf = prop_oneof![
            "[ -~]{0,8}".prop_map(Reply::Simple),
            "[ -~]{0,8}".prop_map(Reply::Error),
            any::<i64>().prop_map(Reply::Int),
            bytes().prop_map(Reply::Bulk),
            Just(Reply::Null),
            bytes().prop_map(Reply::Verbatim),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Reply::Array),
                proptest::collection::vec((inner.clone(), inner.clone()), 0..3)
                    .prop_map(Reply::Map),
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Reply::Set),
                (opt_bytes(), proptest::collection::vec(inner, 0..4))
                    .prop_map(|(next, items)| Reply::Scan(ScanPage { next, items })),
            ]
        })
    }

    #[test]
    fn replies_nested_too_deep_are_refused() {
        let mut r = Reply::Null;
        for _ in 0..=MAX_REPLY_DEPTH {
            r = Reply::Array(vec![r]);
        }
        assert!(Reply::from_binary(&r.to_binary()).is_err());
    }
}

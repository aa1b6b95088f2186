//! Lock and status records of cross-region atomic writes (`crate::atomic`), and the
//! `-LOCKED` reply that tells a caller a key is locked.
//!
//! A *lock* sits on a Redis key while a multi-region MSET, MSETNX or DEL is between its
//! lock and commit steps: key space [`LOCKS`] (namespace `NS_REDIS`, CF_LOCK) at the
//! key's metadata key `slot u16 BE | key`, so it lives in the key's region and moves with
//! it. Its value names the transaction, its primary key, its deadline and the key's
//! pending change:
//!
//! `format u8 (=1) | txn 16 bytes | deadline_ms u64 LE | primary len u32 LE | primary |
//! change u8 (0 = delete, 1 = put, 2 = keep, 3 = writes) | value (put only) | writes
//! (writes only: `count u32 LE`, then per record `key len u32 LE | key | 0 (delete) or
//! 1 | value len u32 LE | value`)`.
//!
//! A *status* record says how a transaction ended, in [`STATUSES`] (CF_WRITE) at
//! `meta_key(primary) | txn 16 bytes`, so it lives with the primary key:
//! one byte, [`COMMITTED`] or [`ROLLED_BACK`].

use crate::error::{Error, Result};
use crate::model;
use crate::resp::Reply;
use nokv::KeySpace;

/// Key space of lock records.
pub const LOCKS: KeySpace = KeySpace::new(nokv::NS_REDIS, nokv::CF_LOCK);
/// Key space of transaction status records.
pub const STATUSES: KeySpace = KeySpace::new(nokv::NS_REDIS, nokv::CF_WRITE);
/// Status: the transaction committed (its primary key's change applied).
pub const COMMITTED: u8 = 1;
/// Status: the transaction was rolled back; its locks are void.
pub const ROLLED_BACK: u8 = 2;
/// Error code of the reply to a command that met a lock.
pub const LOCKED_CODE: &str = "LOCKED";

const FORMAT: u8 = 1;

/// A transaction's id: random, unique across gateways.
pub type TxnId = [u8; 16];

/// Engine records to write: logical key (namespace, column family, key) and value
/// (None: delete).
pub type Records = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// A key's pending change under a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Store this string (MSET, MSETNX).
    Put(Vec<u8>),
    /// Delete the key (DEL, UNLINK).
    Delete,
    /// Leave it as it is: the lock only holds it still while read (EXISTS).
    Keep,
    /// Write these records: the key's share of a MULTI block's writes.
    Writes(Records),
}

/// A decoded lock record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    /// The transaction holding it.
    pub txn: TxnId,
    /// Unix ms after which a reader may roll the transaction back.
    pub deadline_ms: u64,
    /// The transaction's primary key (its status lives there).
    pub primary: Vec<u8>,
    /// What committing does to the key.
    pub change: Change,
}

impl Lock {
    /// The record's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let value_len = match &self.change {
            Change::Put(v) => v.len(),
            _ => 0,
        };
        let mut out = Vec::with_capacity(34 + self.primary.len() + value_len);
        out.push(FORMAT);
        out.extend_from_slice(&self.txn);
        out.extend_from_slice(&self.deadline_ms.to_le_bytes());
        out.extend_from_slice(&(self.primary.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.primary);
        match &self.change {
            Change::Delete => out.push(0),
            Change::Put(v) => {
                out.push(1);
                out.extend_from_slice(v);
            }
            Change::Keep => out.push(2),
            Change::Writes(writes) => {
                out.push(3);
                out.extend_from_slice(&(writes.len() as u32).to_le_bytes());
                for (k, v) in writes {
                    out.extend_from_slice(&(k.len() as u32).to_le_bytes());
                    out.extend_from_slice(k);
                    match v {
                        None => out.push(0),
                        Some(v) => {
                            out.push(1);
                            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                            out.extend_from_slice(v);
                        }
                    }
                }
            }
        }
        out
    }

    /// Decodes [`Lock::encode`]'s output.
    pub fn decode(raw: &[u8]) -> Result<Lock> {
        let corrupt = |detail: &str| Error::Corrupt {
            what: "lock record",
            detail: detail.to_string(),
        };
        if raw.len() < 29 || raw[0] != FORMAT {
            return Err(corrupt("too short or unknown format"));
        }
        let mut txn = [0u8; 16];
        txn.copy_from_slice(&raw[1..17]);
        let deadline_ms = u64::from_le_bytes(raw[17..25].try_into().unwrap_or_default());
        let plen = u32::from_le_bytes(raw[25..29].try_into().unwrap_or_default()) as usize;
        let rest = &raw[29..];
        if rest.len() < plen + 1 {
            return Err(corrupt("primary key runs past the end"));
        }
        let primary = rest[..plen].to_vec();
        let change = match rest[plen] {
            0 if rest.len() == plen + 1 => Change::Delete,
            1 => Change::Put(rest[plen + 1..].to_vec()),
            2 if rest.len() == plen + 1 => Change::Keep,
            3 => Change::Writes(
                decode_writes(&rest[plen + 1..]).ok_or_else(|| corrupt("bad writes"))?,
            ),
            _ => return Err(corrupt("bad change tag")),
        };
        Ok(Lock {
            txn,
            deadline_ms,
            primary,
            change,
        })
    }
}

fn decode_writes(mut raw: &[u8]) -> Option<Records> {
    fn take<'a>(raw: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (raw.get(..n)?, raw.get(n..)?);
        *raw = tail;
        Some(head)
    }
    fn len(raw: &mut &[u8]) -> Option<usize> {
        Some(u32::from_le_bytes(take(raw, 4)?.try_into().ok()?) as usize)
    }
    let n = len(&mut raw)?;
    // Every record takes at least five bytes: bounded by the bytes left.
    if n > raw.len() / 5 {
        return None;
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let klen = len(&mut raw)?;
        let k = take(&mut raw, klen)?.to_vec();
        let v = match take(&mut raw, 1)?[0] {
            0 => None,
            1 => {
                let vlen = len(&mut raw)?;
                Some(take(&mut raw, vlen)?.to_vec())
            }
            _ => return None,
        };
        out.push((k, v));
    }
    raw.is_empty().then_some(out)
}

/// The status record key of `txn`, whose primary key is `primary`.
pub fn status_key(primary: &[u8], txn: &TxnId) -> Vec<u8> {
    let mut out = model::meta_key(primary);
    out.extend_from_slice(txn);
    out
}

/// What a `-LOCKED` reply says: which key is locked, by what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locked {
    /// The locked key.
    pub key: Vec<u8>,
    /// The lock on it.
    pub txn: TxnId,
    /// The lock's deadline (unix ms).
    pub deadline_ms: u64,
    /// The holder's primary key.
    pub primary: Vec<u8>,
}

/// `x` then the bytes in hex (never empty, so words stay apart).
fn hex(b: &[u8]) -> String {
    std::iter::once("x".to_string())
        .chain(b.iter().map(|x| format!("{x:02x}")))
        .collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.strip_prefix('x')?;
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Locked {
    /// The lock found on `key`.
    pub fn new(key: &[u8], lock: &Lock) -> Locked {
        Locked {
            key: key.to_vec(),
            txn: lock.txn,
            deadline_ms: lock.deadline_ms,
            primary: lock.primary.clone(),
        }
    }

    /// `-LOCKED x<key hex> x<txn hex> <deadline ms> x<primary hex>`: internal, resolved by the
    /// store or client that ran the command (`crate::atomic::resolve`), never sent to a
    /// Redis client.
    pub fn reply(&self) -> Reply {
        Reply::error(format!(
            "{LOCKED_CODE} {} {} {} {}",
            hex(&self.key),
            hex(&self.txn),
            self.deadline_ms,
            hex(&self.primary)
        ))
    }

    /// Parses [`Locked::reply`]; None for every other reply.
    pub fn of(reply: &Reply) -> Option<Locked> {
        let Reply::Error(text) = reply else {
            return None;
        };
        let mut words = text.strip_prefix(LOCKED_CODE)?.split_ascii_whitespace();
        let key = unhex(words.next()?)?;
        let txn: TxnId = unhex(words.next()?)?.try_into().ok()?;
        let deadline_ms = words.next()?.parse().ok()?;
        let primary = unhex(words.next()?)?;
        Some(Locked {
            key,
            txn,
            deadline_ms,
            primary,
        })
    }
}

/// Looks for a lock on any of `keys`: the first found, as a `-LOCKED` reply.
pub fn check(view: &dyn crate::store::ReadView, keys: &[&[u8]]) -> Result<Option<Reply>> {
    if keys.is_empty() || !view.may_hold_locks() {
        return Ok(None);
    }
    for k in keys {
        if let Some(raw) = view.get(LOCKS, &model::meta_key(k))? {
            return Ok(Some(Locked::new(k, &Lock::decode(&raw)?).reply()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn lock_records_round_trip(
            txn in any::<[u8; 16]>(),
            deadline_ms in any::<u64>(),
            primary in proptest::collection::vec(any::<u8>(), 0..20),
            value in proptest::collection::vec(any::<u8>(), 0..20),
            tag in 0u8..4,
        ) {
            let change = match tag {
                0 => Change::Delete,
                1 => Change::Put(value),
                2 => Change::Keep,
                _ => Change::Writes(vec![
                    (value.clone(), None),
                    (primary.clone(), Some(value)),
                ]),
            };
            let lock = Lock { txn, deadline_ms, primary: primary.clone(), change };
            prop_assert_eq!(Lock::decode(&lock.encode()).ok(), Some(lock.clone()));
            let locked = Locked::new(&primary, &lock);
            prop_assert_eq!(Locked::of(&locked.reply()), Some(locked));
        }

        #[test]
        fn lock_decoding_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Lock::decode(&raw);
        }
    }

    #[test]
    fn other_errors_are_not_locks() {
        assert_eq!(Locked::of(&Reply::error("ERR LOCKED")), None);
        assert_eq!(Locked::of(&Reply::error("LOCKED zz")), None);
        assert_eq!(Locked::of(&Reply::Int(1)), None);
    }
}

//! The lock record stored in `CF_LOCK`, one per key, and its codec.
//!
//! Encoding: `[format 1][kind u8][varint start_ts][varint ttl_ms][varint min_commit_ts]`
//! `[varint txn_size][varint len][primary][has short value 0|1]([varint len][short value])`.
//! Kinds are `P` (put), `D` (delete), `L` (lock only). Trailing bytes are an error.

use super::error::CodecError;
use crate::codec::{put_bytes, put_varint, Reader};

/// Format byte of the current lock encoding.
const LOCK_FORMAT: u8 = 1;

/// What a prewritten key will become when its transaction commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockKind {
    /// A new value.
    Put,
    /// A delete.
    Delete,
    /// No change: the key is only locked (its commit record conflicts with concurrent writers).
    Lock,
}

impl LockKind {
    fn byte(self) -> u8 {
        match self {
            LockKind::Put => b'P',
            LockKind::Delete => b'D',
            LockKind::Lock => b'L',
        }
    }

    fn from_byte(b: u8) -> Option<LockKind> {
        match b {
            b'P' => Some(LockKind::Put),
            b'D' => Some(LockKind::Delete),
            b'L' => Some(LockKind::Lock),
            _ => None,
        }
    }
}

/// A prewrite lock on a key: which transaction holds it and what it will write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    /// The transaction's primary key (its commit or rollback decides the transaction).
    pub primary: Vec<u8>,
    /// The transaction's start timestamp.
    pub start_ts: u64,
    /// Milliseconds of physical time after `start_ts` before others may roll it back.
    pub ttl_ms: u64,
    /// What the key becomes at commit.
    pub kind: LockKind,
    /// The value itself when it is short (otherwise in `CF_DEFAULT` at `start_ts`).
    pub short_value: Option<Vec<u8>>,
    /// The smallest commit timestamp allowed (raised by readers in `check_txn_status`).
    pub min_commit_ts: u64,
    /// Keys in the transaction (a hint for resolvers; 0 if unknown).
    pub txn_size: u64,
}

impl Lock {
    /// The encoded record.
    pub fn encode(&self) -> Vec<u8> {
        let short = self.short_value.as_deref().map_or(0, <[u8]>::len);
        let mut out = Vec::with_capacity(self.primary.len() + short + 40);
        out.push(LOCK_FORMAT);
        out.push(self.kind.byte());
        put_varint(&mut out, self.start_ts);
        put_varint(&mut out, self.ttl_ms);
        put_varint(&mut out, self.min_commit_ts);
        put_varint(&mut out, self.txn_size);
        put_bytes(&mut out, &self.primary);
        match &self.short_value {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                put_bytes(&mut out, v);
            }
        }
        out
    }

    /// Decodes a record; an error (never a panic) on any malformed input.
    pub fn decode(buf: &[u8]) -> Result<Lock, CodecError> {
        let mut r = Reader::new(buf);
        let bad = |what: &str| CodecError(format!("lock record: {what}"));
        let format = r.u8().ok_or_else(|| bad("empty"))?;
        if format != LOCK_FORMAT {
            return Err(bad(&format!("unknown format {format}")));
        }
        let kind_byte = r.u8().ok_or_else(|| bad("truncated kind"))?;
        let kind = LockKind::from_byte(kind_byte)
            .ok_or_else(|| bad(&format!("unknown kind {kind_byte}")))?;
        let start_ts = r.varint().ok_or_else(|| bad("truncated start_ts"))?;
        let ttl_ms = r.varint().ok_or_else(|| bad("truncated ttl_ms"))?;
        let min_commit_ts = r.varint().ok_or_else(|| bad("truncated min_commit_ts"))?;
        let txn_size = r.varint().ok_or_else(|| bad("truncated txn_size"))?;
        let primary = r.bytes().ok_or_else(|| bad("truncated primary"))?.to_vec();
        let short_value = match r.u8().ok_or_else(|| bad("truncated short value flag"))? {
            0 => None,
            1 => Some(
                r.bytes()
                    .ok_or_else(|| bad("truncated short value"))?
                    .to_vec(),
            ),
            f => return Err(bad(&format!("bad short value flag {f}"))),
        };
        if !r.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(Lock {
            primary,
            start_ts,
            ttl_ms,
            kind,
            short_value,
            min_commit_ts,
            txn_size,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn lock_strategy() -> impl Strategy<Value = Lock> {
        (
            proptest::collection::vec(any::<u8>(), 0..40),
            any::<u64>(),
            any::<u64>(),
            prop_oneof![
                Just(LockKind::Put),
                Just(LockKind::Delete),
                Just(LockKind::Lock)
            ],
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(
                |(primary, start_ts, ttl_ms, kind, short_value, min_commit_ts, txn_size)| Lock {
                    primary,
                    start_ts,
                    ttl_ms,
                    kind,
                    short_value,
                    min_commit_ts,
                    txn_size,
                },
            )
    }

    proptest! {
        #[test]
        fn round_trips(lock in lock_strategy()) {
            prop_assert_eq!(Lock::decode(&lock.encode()), Ok(lock));
        }

        #[test]
        fn every_strict_prefix_is_an_error(lock in lock_strategy()) {
            let enc = lock.encode();
            for n in 0..enc.len() {
                prop_assert!(Lock::decode(&enc[..n]).is_err(), "prefix of {} bytes decoded", n);
            }
        }

        #[test]
        fn garbage_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = Lock::decode(&buf);
        }

        #[test]
        fn mutated_bytes_never_panic(lock in lock_strategy(), at in any::<usize>(), b in any::<u8>()) {
            let mut enc = lock.encode();
            let i = at % enc.len();
            enc[i] = b;
            let _ = Lock::decode(&enc);
        }
    }

    #[test]
    fn rejects_unknown_format_kind_flag_and_trailing_bytes() {
        let lock = Lock {
            primary: b"p".to_vec(),
            start_ts: 5,
            ttl_ms: 10,
            kind: LockKind::Put,
            short_value: None,
            min_commit_ts: 5,
            txn_size: 1,
        };
        let enc = lock.encode();
        for (i, b) in [(0, 2u8), (1, b'X'), (enc.len() - 1, 7)] {
            let mut e = enc.clone();
            e[i] = b;
            assert!(Lock::decode(&e).is_err(), "byte {i} = {b} accepted");
        }
        let mut e = enc.clone();
        e.push(0);
        assert!(Lock::decode(&e).is_err());
    }
}

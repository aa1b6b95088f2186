//! The write record stored in `CF_WRITE` at version `commit_ts`, and its codec.
//!
//! Encoding: `[kind u8][varint start_ts]`, then for a short value `[b'v'][varint len][value]`.
//! Kinds are `P` (put), `D` (delete), `L` (lock only), `R` (rollback: stored at version
//! `start_ts`). Unknown kinds or tags and trailing bytes are errors.

use super::error::CodecError;
use super::lock::LockKind;
use crate::codec::{put_bytes, put_varint, Reader};

/// Tag of the optional short value field.
const SHORT_VALUE_TAG: u8 = b'v';

/// What a write record says about its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteKind {
    /// A committed value.
    Put,
    /// A committed delete.
    Delete,
    /// A committed lock-only mutation (no change to the value).
    Lock,
    /// The transaction at `start_ts` was rolled back on this key (no change).
    Rollback,
}

impl WriteKind {
    fn byte(self) -> u8 {
        match self {
            WriteKind::Put => b'P',
            WriteKind::Delete => b'D',
            WriteKind::Lock => b'L',
            WriteKind::Rollback => b'R',
        }
    }

    fn from_byte(b: u8) -> Option<WriteKind> {
        match b {
            b'P' => Some(WriteKind::Put),
            b'D' => Some(WriteKind::Delete),
            b'L' => Some(WriteKind::Lock),
            b'R' => Some(WriteKind::Rollback),
            _ => None,
        }
    }

    /// The write kind a lock of `kind` becomes at commit.
    pub fn of_lock(kind: LockKind) -> WriteKind {
        match kind {
            LockKind::Put => WriteKind::Put,
            LockKind::Delete => WriteKind::Delete,
            LockKind::Lock => WriteKind::Lock,
        }
    }
}

/// A commit (or rollback) record of one transaction on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// What happened.
    pub kind: WriteKind,
    /// The transaction's start timestamp (where its value sits in `CF_DEFAULT`).
    pub start_ts: u64,
    /// The value itself when it is short (a put only).
    pub short_value: Option<Vec<u8>>,
}

impl Write {
    /// A rollback record of the transaction at `start_ts`.
    pub fn rollback(start_ts: u64) -> Write {
        Write {
            kind: WriteKind::Rollback,
            start_ts,
            short_value: None,
        }
    }

    /// The encoded record.
    pub fn encode(&self) -> Vec<u8> {
        let short = self.short_value.as_deref().map_or(0, <[u8]>::len);
        let mut out = Vec::with_capacity(short + 16);
        out.push(self.kind.byte());
        put_varint(&mut out, self.start_ts);
        if let Some(v) = &self.short_value {
            out.push(SHORT_VALUE_TAG);
            put_bytes(&mut out, v);
        }
        out
    }

    /// Decodes a record; an error (never a panic) on any malformed input.
    pub fn decode(buf: &[u8]) -> Result<Write, CodecError> {
        let mut r = Reader::new(buf);
        let bad = |what: &str| CodecError(format!("write record: {what}"));
        let kind_byte = r.u8().ok_or_else(|| bad("empty"))?;
        let kind = WriteKind::from_byte(kind_byte)
            .ok_or_else(|| bad(&format!("unknown kind {kind_byte}")))?;
        let start_ts = r.varint().ok_or_else(|| bad("truncated start_ts"))?;
        let short_value = if r.is_empty() {
            None
        } else {
            match r.u8() {
                Some(SHORT_VALUE_TAG) => Some(
                    r.bytes()
                        .ok_or_else(|| bad("truncated short value"))?
                        .to_vec(),
                ),
                t => return Err(bad(&format!("unknown field tag {t:?}"))),
            }
        };
        if !r.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(Write {
            kind,
            start_ts,
            short_value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn write_strategy() -> impl Strategy<Value = Write> {
        (
            prop_oneof![
                Just(WriteKind::Put),
                Just(WriteKind::Delete),
                Just(WriteKind::Lock),
                Just(WriteKind::Rollback)
            ],
            any::<u64>(),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
        )
            .prop_map(|(kind, start_ts, short_value)| Write {
                kind,
                start_ts,
                short_value,
            })
    }

    proptest! {
        #[test]
        fn round_trips(w in write_strategy()) {
            prop_assert_eq!(Write::decode(&w.encode()), Ok(w));
        }

        #[test]
        fn truncations_are_errors(w in write_strategy()) {
            let enc = w.encode();
            // Cutting exactly before the optional field is a valid record without it.
            let optional_at = enc.len() - w.short_value.as_ref().map_or(0, |v| {
                let mut n = Vec::new();
                put_bytes(&mut n, v);
                n.len() + 1
            });
            for n in 0..enc.len() {
                if n != optional_at {
                    prop_assert!(Write::decode(&enc[..n]).is_err(), "prefix of {} bytes decoded", n);
                }
            }
        }

        #[test]
        fn garbage_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = Write::decode(&buf);
        }
    }

    #[test]
    fn rejects_unknown_kind_tag_and_trailing_bytes() {
        assert!(Write::decode(b"X\x01").is_err());
        assert!(Write::decode(b"P\x01z").is_err());
        assert!(Write::decode(b"P\x01v\x01ab").is_err());
        assert!(Write::decode(b"").is_err());
        assert_eq!(
            Write::decode(b"P\x01v\x02ab"),
            Ok(Write {
                kind: WriteKind::Put,
                start_ts: 1,
                short_value: Some(b"ab".to_vec())
            })
        );
    }
}

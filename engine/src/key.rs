//! Internal key format: `[namespace u8][user key][trailer u64 BE]`.
//!
//! The trailer is `!(seq << 8 | kind)` in big-endian, so that for one logical
//! key (namespace + user key) newer entries sort first. Logical keys compare
//! bytewise; see [`compare_internal`].

use std::cmp::Ordering;

/// Namespace of the ordered key-value space that the embedded API writes.
pub const NS_KV: u8 = b'k';
/// Namespace reserved for the Redis data model (the node's gateway).
pub const NS_REDIS: u8 = b'r';
/// Namespace reserved for node-local metadata (region state, raft state).
pub const NS_META: u8 = b'm';

/// Length of the trailer appended to every logical key.
pub const TRAILER_LEN: usize = 8;
/// Largest sequence number an entry may carry (56 bits).
pub const MAX_SEQ: u64 = (1 << 56) - 1;

/// What an internal entry means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// A tombstone: the key is deleted as of this sequence number.
    Delete = 0,
    /// A value.
    Put = 1,
    /// A value with an absolute expiry: the stored value is `[expiry unix ms u64 LE][value]`.
    PutWithExpiry = 2,
}

/// Kind used in lookup keys: sorts before every real entry of the same sequence.
pub const KIND_SEEK: u8 = 0xff;

impl Kind {
    /// Decodes a kind byte; `None` for unknown kinds.
    pub fn from_u8(b: u8) -> Option<Kind> {
        match b {
            0 => Some(Kind::Delete),
            1 => Some(Kind::Put),
            2 => Some(Kind::PutWithExpiry),
            _ => None,
        }
    }
}

/// Bytes of the expiry header in front of a [`Kind::PutWithExpiry`] value.
pub const EXPIRY_LEN: usize = 8;

/// What a stored entry means to a reader at time `now_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved<'a> {
    /// The key has this value.
    Value(&'a [u8]),
    /// The key is absent: deleted, or expired at `now_ms`.
    Gone,
}

/// Interprets an entry of raw kind `kind` with stored value `raw` at `now_ms`.
///
/// A value whose expiry header is missing reads as absent; codecs reject such entries earlier.
pub fn resolve(kind: u8, raw: &[u8], now_ms: u64) -> Resolved<'_> {
    match Kind::from_u8(kind) {
        Some(Kind::Put) => Resolved::Value(raw),
        Some(Kind::PutWithExpiry) => match expiry_of(raw) {
            Some(at) if at > now_ms => Resolved::Value(&raw[EXPIRY_LEN..]),
            _ => Resolved::Gone,
        },
        Some(Kind::Delete) | None => Resolved::Gone,
    }
}

/// The expiry (unix ms) stored in front of a [`Kind::PutWithExpiry`] value.
pub fn expiry_of(raw: &[u8]) -> Option<u64> {
    let h: [u8; EXPIRY_LEN] = raw.get(..EXPIRY_LEN)?.try_into().ok()?;
    Some(u64::from_le_bytes(h))
}

/// Encodes the 8-byte trailer for `seq` and raw kind byte `kind`.
pub fn encode_trailer(seq: u64, kind: u8) -> [u8; TRAILER_LEN] {
    debug_assert!(seq <= MAX_SEQ, "sequence {seq} above MAX_SEQ");
    (!((seq << 8) | kind as u64)).to_be_bytes()
}

/// Appends the internal key for (`ns`, `user_key`, `seq`, `kind`) to `out`.
pub fn append_internal_key(out: &mut Vec<u8>, ns: u8, user_key: &[u8], seq: u64, kind: u8) {
    out.reserve(1 + user_key.len() + TRAILER_LEN);
    out.push(ns);
    out.extend_from_slice(user_key);
    out.extend_from_slice(&encode_trailer(seq, kind));
}

/// Builds the internal key for a logical key (namespace byte included) and trailer.
pub fn make_internal_key(logical: &[u8], seq: u64, kind: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(logical.len() + TRAILER_LEN);
    out.extend_from_slice(logical);
    out.extend_from_slice(&encode_trailer(seq, kind));
    out
}

/// Builds the lookup key that sorts before every entry of `logical` visible at `seq`.
pub fn lookup_key(logical: &[u8], seq: u64) -> Vec<u8> {
    make_internal_key(logical, seq, KIND_SEEK)
}

/// The logical key (namespace byte + user key) of an internal key.
#[inline]
pub fn logical_key(ikey: &[u8]) -> &[u8] {
    debug_assert!(
        ikey.len() >= TRAILER_LEN,
        "internal key shorter than trailer"
    );
    &ikey[..ikey.len() - TRAILER_LEN]
}

/// Decodes the trailer of an internal key into (sequence, raw kind byte).
#[inline]
pub fn parse_trailer(ikey: &[u8]) -> (u64, u8) {
    let t = &ikey[ikey.len() - TRAILER_LEN..];
    let packed = !u64::from_be_bytes([t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]]);
    (packed >> 8, (packed & 0xff) as u8)
}

/// Orders internal keys: logical key ascending, then sequence descending.
#[inline]
pub fn compare_internal(a: &[u8], b: &[u8]) -> Ordering {
    let (la, lb) = (logical_key(a), logical_key(b));
    match la.cmp(lb) {
        Ordering::Equal => a[a.len() - TRAILER_LEN..].cmp(&b[b.len() - TRAILER_LEN..]),
        o => o,
    }
}

/// True when the internal key is structurally valid (long enough, known kind).
pub fn is_valid_internal_key(ikey: &[u8]) -> bool {
    ikey.len() > TRAILER_LEN && Kind::from_u8(parse_trailer(ikey).1).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_sorts_first_and_lookup_precedes() {
        let a = make_internal_key(b"kfoo", 5, Kind::Put as u8);
        let b = make_internal_key(b"kfoo", 3, Kind::Delete as u8);
        assert_eq!(compare_internal(&a, &b), Ordering::Less);
        let l = lookup_key(b"kfoo", 5);
        assert_eq!(compare_internal(&l, &a), Ordering::Less);
        let l4 = lookup_key(b"kfoo", 4);
        assert_eq!(compare_internal(&l4, &a), Ordering::Greater);
        assert_eq!(compare_internal(&l4, &b), Ordering::Less);
        // prefix keys compare by logical key first
        let c = make_internal_key(b"kfo", 1, 1);
        assert_eq!(compare_internal(&c, &a), Ordering::Less);
        assert_eq!(parse_trailer(&a), (5, 1));
    }
}

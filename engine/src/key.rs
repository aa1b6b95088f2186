//! Internal key format: `[namespace u8][column family u8][user key][trailer 16 bytes]`.
//!
//! The trailer is `!version` (u64 big-endian) followed by `!(seq << 8 | kind)`
//! (u64 big-endian), so that for one logical key (namespace + column family +
//! user key) higher versions sort first and, within a version, newer writes
//! sort first. Logical keys compare bytewise; see [`compare_internal`].
//!
//! The *version* is the MVCC timestamp a write is visible at (explicit with
//! `put_at`, or equal to its sequence number when the engine assigns it); the
//! *sequence number* orders writes inside one engine and publishes whole write
//! groups at once. A reader at `(ts, seq)` sees, for each logical key, the
//! first entry in that order with `version <= ts` and `seq <= read seq`.

use std::cmp::Ordering;

/// Namespace of the ordered key-value space that the embedded API writes.
pub const NS_KV: u8 = b'k';
/// Namespace reserved for the Redis data model (the node's gateway).
pub const NS_REDIS: u8 = b'r';
/// Namespace reserved for node-local metadata (region state, raft state).
pub const NS_META: u8 = b'm';

/// Column family for ordinary data (and the value column of transactions).
pub const CF_DEFAULT: u8 = 0;
/// Column family for transaction locks.
pub const CF_LOCK: u8 = 1;
/// Column family for transaction commit records.
pub const CF_WRITE: u8 = 2;

/// Bytes in front of the user key in a logical key: namespace and column family.
pub const PREFIX_LEN: usize = 2;

/// Where a key lives: a namespace and a column family inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeySpace {
    /// Namespace byte ([`NS_KV`], [`NS_REDIS`], [`NS_META`], ...).
    pub ns: u8,
    /// Column family byte ([`CF_DEFAULT`], [`CF_LOCK`], [`CF_WRITE`], ...).
    pub cf: u8,
}

impl KeySpace {
    /// The default column family of the ordered-KV namespace (what `Db::put`/`get` use).
    pub const KV: KeySpace = KeySpace {
        ns: NS_KV,
        cf: CF_DEFAULT,
    };

    /// A key space from its namespace and column family bytes.
    pub const fn new(ns: u8, cf: u8) -> KeySpace {
        KeySpace { ns, cf }
    }

    /// Column family `cf` of the ordered-KV namespace.
    pub const fn kv(cf: u8) -> KeySpace {
        KeySpace { ns: NS_KV, cf }
    }

    /// The two prefix bytes of every logical key in this space.
    pub const fn prefix(self) -> [u8; PREFIX_LEN] {
        [self.ns, self.cf]
    }

    /// The logical key (prefix + user key) of `user_key` in this space.
    pub fn logical(self, user_key: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(PREFIX_LEN + user_key.len());
        out.extend_from_slice(&self.prefix());
        out.extend_from_slice(user_key);
        out
    }

    /// The smallest logical key past every key of this space.
    pub fn end(self) -> Vec<u8> {
        match self.cf.checked_add(1) {
            Some(cf) => vec![self.ns, cf],
            None => vec![self.ns.wrapping_add(1)],
        }
    }
}

/// Length of the trailer appended to every logical key: version (8) + sequence and kind (8).
pub const TRAILER_LEN: usize = 16;
/// Largest sequence number an entry may carry (56 bits).
pub const MAX_SEQ: u64 = (1 << 56) - 1;
/// The read timestamp that sees every version ("latest").
pub const MAX_VERSION: u64 = u64::MAX;

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
    /// A value in the value log (tables only): the stored value is a 20-byte value pointer.
    ValuePointer = 3,
    /// A value-log value with an expiry (tables only): `[expiry unix ms u64 LE][pointer]`.
    ValuePointerWithExpiry = 4,
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
            3 => Some(Kind::ValuePointer),
            4 => Some(Kind::ValuePointerWithExpiry),
            _ => None,
        }
    }
}

/// Bytes of the expiry header in front of a [`Kind::PutWithExpiry`] value.
pub const EXPIRY_LEN: usize = 8;

/// True for the kinds whose stored value starts with an expiry header (2 and 4).
#[inline]
pub fn has_expiry(kind: u8) -> bool {
    kind == Kind::PutWithExpiry as u8 || kind == Kind::ValuePointerWithExpiry as u8
}

/// True for the kinds whose value lives in the value log (3 and 4).
#[inline]
pub fn is_pointer_kind(kind: u8) -> bool {
    kind == Kind::ValuePointer as u8 || kind == Kind::ValuePointerWithExpiry as u8
}

/// The encoded value pointer of an entry of a pointer kind (after its expiry header, if any).
pub fn pointer_bytes(kind: u8, raw: &[u8]) -> Option<&[u8]> {
    match Kind::from_u8(kind)? {
        Kind::ValuePointer => Some(raw),
        Kind::ValuePointerWithExpiry => raw.get(EXPIRY_LEN..),
        _ => None,
    }
}

/// What a stored entry means to a reader at time `now_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved<'a> {
    /// The key has this value.
    Value(&'a [u8]),
    /// The key has a value stored in the value log; these are the pointer's bytes.
    Pointer(&'a [u8]),
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
        Some(Kind::ValuePointer) => Resolved::Pointer(raw),
        Some(Kind::ValuePointerWithExpiry) => match expiry_of(raw) {
            Some(at) if at > now_ms => Resolved::Pointer(&raw[EXPIRY_LEN..]),
            _ => Resolved::Gone,
        },
        Some(Kind::Delete) | None => Resolved::Gone,
    }
}

/// The expiry (unix ms) stored in front of a [`Kind::PutWithExpiry`] or
/// [`Kind::ValuePointerWithExpiry`] value.
pub fn expiry_of(raw: &[u8]) -> Option<u64> {
    let h: [u8; EXPIRY_LEN] = raw.get(..EXPIRY_LEN)?.try_into().ok()?;
    Some(u64::from_le_bytes(h))
}

/// Encodes the trailer for (`version`, `seq`, raw kind byte `kind`).
pub fn encode_trailer(version: u64, seq: u64, kind: u8) -> [u8; TRAILER_LEN] {
    debug_assert!(seq <= MAX_SEQ, "sequence {seq} above MAX_SEQ");
    let mut t = [0u8; TRAILER_LEN];
    t[..8].copy_from_slice(&(!version).to_be_bytes());
    t[8..].copy_from_slice(&(!((seq << 8) | kind as u64)).to_be_bytes());
    t
}

/// Appends the internal key for (`space`, `user_key`, `version`, `seq`, `kind`) to `out`.
pub fn append_internal_key(
    out: &mut Vec<u8>,
    space: KeySpace,
    user_key: &[u8],
    version: u64,
    seq: u64,
    kind: u8,
) {
    out.reserve(PREFIX_LEN + user_key.len() + TRAILER_LEN);
    out.extend_from_slice(&space.prefix());
    out.extend_from_slice(user_key);
    out.extend_from_slice(&encode_trailer(version, seq, kind));
}

/// Builds the internal key for a logical key (prefix included) and trailer.
pub fn make_internal_key(logical: &[u8], version: u64, seq: u64, kind: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(logical.len() + TRAILER_LEN);
    out.extend_from_slice(logical);
    out.extend_from_slice(&encode_trailer(version, seq, kind));
    out
}

/// Builds the lookup key that sorts before every entry of `logical` visible at (`ts`, `seq`).
///
/// Entries at or after it have `version < ts`, or `version == ts` and `seq <= seq`;
/// entries of lower versions but newer sequence numbers still need [`visible`].
pub fn lookup_key(logical: &[u8], ts: u64, seq: u64) -> Vec<u8> {
    make_internal_key(logical, ts, seq.min(MAX_SEQ), KIND_SEEK)
}

/// The internal key sorting first among all entries of `logical`.
pub fn first_key(logical: &[u8]) -> Vec<u8> {
    lookup_key(logical, MAX_VERSION, MAX_SEQ)
}

/// The internal key sorting last among all entries of `logical`.
pub fn last_key(logical: &[u8]) -> Vec<u8> {
    make_internal_key(logical, 0, 0, 0)
}

/// The logical key (namespace + column family + user key) of an internal key.
#[inline]
pub fn logical_key(ikey: &[u8]) -> &[u8] {
    debug_assert!(
        ikey.len() >= TRAILER_LEN,
        "internal key shorter than trailer"
    );
    &ikey[..ikey.len() - TRAILER_LEN]
}

/// Decodes the sequence and raw kind byte of an internal key.
#[inline]
pub fn parse_trailer(ikey: &[u8]) -> (u64, u8) {
    let t = &ikey[ikey.len() - 8..];
    let packed = !u64::from_be_bytes([t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]]);
    (packed >> 8, (packed & 0xff) as u8)
}

/// Decodes the version of an internal key.
#[inline]
pub fn parse_version(ikey: &[u8]) -> u64 {
    let t = &ikey[ikey.len() - TRAILER_LEN..ikey.len() - 8];
    !u64::from_be_bytes([t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]])
}

/// True when a reader at (`ts`, `read_seq`) may see the entry `ikey`.
#[inline]
pub fn visible(ikey: &[u8], ts: u64, read_seq: u64) -> bool {
    parse_version(ikey) <= ts && parse_trailer(ikey).0 <= read_seq
}

/// Orders internal keys: logical key ascending, then version and sequence descending.
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
        let a = make_internal_key(b"k\0foo", 5, 5, Kind::Put as u8);
        let b = make_internal_key(b"k\0foo", 3, 3, Kind::Delete as u8);
        assert_eq!(compare_internal(&a, &b), Ordering::Less);
        let l = lookup_key(b"k\0foo", 5, 5);
        assert_eq!(compare_internal(&l, &a), Ordering::Less);
        let l4 = lookup_key(b"k\0foo", 4, 4);
        assert_eq!(compare_internal(&l4, &a), Ordering::Greater);
        assert_eq!(compare_internal(&l4, &b), Ordering::Less);
        // prefix keys compare by logical key first
        let c = make_internal_key(b"k\0fo", 1, 1, 1);
        assert_eq!(compare_internal(&c, &a), Ordering::Less);
        assert_eq!(parse_trailer(&a), (5, 1));
        assert_eq!(parse_version(&a), 5);
    }

    #[test]
    fn versions_order_before_sequences() {
        // A higher version written earlier sorts before a lower version written later.
        let hi = make_internal_key(b"kx", 10, 1, Kind::Put as u8);
        let lo = make_internal_key(b"kx", 9, 7, Kind::Put as u8);
        assert_eq!(compare_internal(&hi, &lo), Ordering::Less);
        assert!(visible(&lo, 9, 7));
        assert!(!visible(&lo, 9, 6));
        assert!(!visible(&hi, 9, 100));
        assert!(compare_internal(&first_key(b"kx"), &hi).is_lt());
        assert!(compare_internal(&last_key(b"kx"), &lo).is_gt());
    }

    #[test]
    fn key_space_end_covers_the_space() {
        let s = KeySpace::kv(CF_WRITE);
        assert!(s.logical(b"\xff\xff") < s.end());
        assert!(KeySpace::new(b'k', 255).end() == vec![b'l']);
    }
}

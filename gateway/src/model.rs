//! The Redis data model on the KV layer: hash slots, internal keys and metadata records.
//!
//! Every Redis key `k` has one *metadata* record in namespace [`nokv::NS_REDIS`],
//! column family [`META_CF`], at key `slot(k) u16 BE | k`. Its value starts with
//! a type byte and an absolute expiry (unix ms, 0 = none); a string keeps its
//! bytes inline, a hash keeps a generation and a field count. Hash fields live in
//! [`SUBKEY_CF`] at `slot u16 BE | len(k) u32 BE | k | generation u64 BE | field`,
//! so DEL, EXPIRE and type checks touch only the metadata record, whatever the
//! hash's size; fields of an older generation are garbage (see `docs/redis.md`).

use crate::error::{Error, Result};
use nokv::KeySpace;

/// Number of Redis Cluster hash slots.
pub const SLOTS: u16 = 16384;
/// Column family of metadata records (one per Redis key).
pub const META_CF: u8 = nokv::CF_DEFAULT;
/// Column family of hash fields (and, later, other collection members).
pub const SUBKEY_CF: u8 = 0x10;
/// Key space of metadata records.
pub const META: KeySpace = KeySpace::new(nokv::NS_REDIS, META_CF);
/// Key space of collection members.
pub const SUBKEYS: KeySpace = KeySpace::new(nokv::NS_REDIS, SUBKEY_CF);

/// CRC16/XMODEM (polynomial 0x1021, initial value 0, no reflection), as Redis Cluster uses.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The hash slot of `key`: CRC16 of the `{hash tag}` if there is a non-empty one, else of the key.
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|s| {
        let rest = &key[s + 1..];
        match rest.iter().position(|&b| b == b'}') {
            Some(0) | None => None,
            Some(e) => Some(&rest[..e]),
        }
    });
    crc16(tagged.unwrap_or(key)) & (SLOTS - 1)
}

/// The metadata key of `key`: `slot u16 BE | key`.
pub fn meta_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + key.len());
    out.extend_from_slice(&slot(key).to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// The Redis key inside a metadata key (drops the slot).
pub fn user_key(meta_key: &[u8]) -> &[u8] {
    meta_key.get(2..).unwrap_or(&[])
}

/// The prefix shared by every member of one generation of a collection.
pub fn subkey_prefix(key: &[u8], generation: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + 4 + key.len() + 8);
    out.extend_from_slice(&slot(key).to_be_bytes());
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&generation.to_be_bytes());
    out
}

/// The member key of `field` in one generation of collection `key`.
pub fn subkey(key: &[u8], generation: u64, field: &[u8]) -> Vec<u8> {
    let mut out = subkey_prefix(key, generation);
    out.extend_from_slice(field);
    out
}

/// The type of a Redis value as stored in its metadata record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisType {
    /// A string.
    String,
    /// A hash.
    Hash,
}

impl RedisType {
    /// The name TYPE replies with.
    pub fn name(self) -> &'static str {
        match self {
            RedisType::String => "string",
            RedisType::Hash => "hash",
        }
    }
}

const TYPE_STRING: u8 = 1;
const TYPE_HASH: u8 = 2;
const HEADER: usize = 9;

/// What a metadata record holds besides type and expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A string's bytes.
    String(Vec<u8>),
    /// A hash: the generation its fields are stored under and how many there are.
    Hash {
        /// Generation (the version of the write that created this hash).
        generation: u64,
        /// Number of fields.
        len: u64,
    },
}

/// A decoded metadata record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Absolute expiry in unix ms; 0 means none.
    pub expiry_ms: u64,
    /// Type-specific contents.
    pub body: Body,
}

impl Meta {
    /// A string record.
    pub fn string(value: Vec<u8>, expiry_ms: u64) -> Meta {
        Meta {
            expiry_ms,
            body: Body::String(value),
        }
    }

    /// The value's type.
    pub fn kind(&self) -> RedisType {
        match self.body {
            Body::String(_) => RedisType::String,
            Body::Hash { .. } => RedisType::Hash,
        }
    }

    /// Whether the key is still live at `now_ms` (Redis: expired once now > expiry).
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.expiry_ms == 0 || now_ms <= self.expiry_ms
    }

    /// Encodes the record: `type u8 | expiry u64 LE | body`.
    pub fn encode(&self) -> Vec<u8> {
        let (tag, extra) = match &self.body {
            Body::String(v) => (TYPE_STRING, v.len()),
            Body::Hash { .. } => (TYPE_HASH, 16),
        };
        let mut out = Vec::with_capacity(HEADER + extra);
        out.push(tag);
        out.extend_from_slice(&self.expiry_ms.to_le_bytes());
        match &self.body {
            Body::String(v) => out.extend_from_slice(v),
            Body::Hash { generation, len } => {
                out.extend_from_slice(&generation.to_le_bytes());
                out.extend_from_slice(&len.to_le_bytes());
            }
        }
        out
    }

    /// Decodes a record written by [`Meta::encode`].
    pub fn decode(raw: &[u8]) -> Result<Meta> {
        let corrupt = |detail: String| Error::Corrupt {
            what: "metadata record",
            detail,
        };
        if raw.len() < HEADER {
            return Err(corrupt(format!(
                "{} bytes, need at least {HEADER}",
                raw.len()
            )));
        }
        let expiry_ms = read_u64(&raw[1..HEADER]);
        let rest = &raw[HEADER..];
        let body = match raw[0] {
            TYPE_STRING => Body::String(rest.to_vec()),
            TYPE_HASH if rest.len() == 16 => Body::Hash {
                generation: read_u64(&rest[..8]),
                len: read_u64(&rest[8..]),
            },
            t => return Err(corrupt(format!("type {t} with {} body bytes", rest.len()))),
        };
        Ok(Meta { expiry_ms, body })
    }
}

fn read_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn crc16_matches_the_xmodem_check_value() {
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(crc16(b""), 0);
    }

    #[test]
    fn slots_match_redis_cluster_keyslot() {
        // Values from Redis' CLUSTER KEYSLOT and its cluster spec.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"hello"), 866);
        assert_eq!(slot(b"somekey"), 11058);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        // Empty tag: the whole key is hashed.
        assert_eq!(slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") & 0x3fff);
        // First '{' and the first '}' after it.
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"foo{bar}{zap}"), slot(b"bar"));
        // No closing brace: whole key.
        assert_eq!(slot(b"foo{bar"), crc16(b"foo{bar") & 0x3fff);
    }

    #[test]
    fn keys_sort_by_slot_then_key() {
        let k = meta_key(b"foo");
        assert_eq!(&k[..2], &12182u16.to_be_bytes());
        assert_eq!(user_key(&k), b"foo");
        let a = subkey(b"a", 7, b"f");
        let b = subkey(b"a\0\0\0\0\0\0\0\x07", 0, b"");
        assert_ne!(a, b, "the key length keeps keys and generations apart");
        assert!(subkey(b"h", 3, b"x").starts_with(&subkey_prefix(b"h", 3)));
    }

    proptest! {
        #[test]
        fn meta_round_trips(expiry in any::<u64>(), value in proptest::collection::vec(any::<u8>(), 0..64),
                            generation in any::<u64>(), len in any::<u64>(), hash in any::<bool>()) {
            let m = if hash {
                Meta { expiry_ms: expiry, body: Body::Hash { generation, len } }
            } else {
                Meta::string(value, expiry)
            };
            prop_assert_eq!(Meta::decode(&m.encode()).unwrap(), m);
        }

        #[test]
        fn meta_decode_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = Meta::decode(&raw);
        }
    }

    #[test]
    fn expiry_is_inclusive() {
        let m = Meta::string(vec![], 100);
        assert!(m.is_live(100));
        assert!(!m.is_live(101));
        assert!(Meta::string(vec![], 0).is_live(u64::MAX));
    }
}

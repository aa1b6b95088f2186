//! Consistency checks of replicated regions.
//!
//! The leader of a region proposes a check entry ([`encode_check`]); every replica, when
//! it applies the entry, pins an engine snapshot at exactly that applied index (no IO) and
//! hashes the region's data in it on its blocking pool ([`hash_region`]). Each store keeps
//! the hash of the latest check of every region it holds ([`CheckBook`]); the leader
//! collects the other replicas' hashes over their Redis ports (`NOKV.REGION HASH`, see
//! docs/redis.md), compares them with its own, logs (with region and stores) and counts
//! a mismatch (`nokv_consistency_mismatch_total`) and records the verdict
//! (`nokv_consistency_last_ok`, the `NOKV.REGION CHECK` reply).

use crate::layout;
use nokv::{Db, KeySpace, ReadOptions};
use nokv_raft::RegionDescriptor;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::Mutex;
use std::time::Duration;

/// Default interval between two periodic checks of a region led here
/// (`NOKV_CONSISTENCY_CHECK_SECS` overrides it; 0 turns periodic checks off).
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(60);
/// Longest the leader waits for every replica's hash of one check.
pub const COLLECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Connect/read timeout of one hash query to another store.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Checks this store led to a verdict.
pub const CHECKS_TOTAL: &str = "nokv_consistency_checks_total";
/// Checks led here whose replicas' hashes differed.
pub const MISMATCH_TOTAL: &str = "nokv_consistency_mismatch_total";
/// The last conclusive check led here: 1 every replica agreed (also before any), 0 a mismatch.
pub const LAST_OK: &str = "nokv_consistency_last_ok";

/// Registers the checks' metrics (after the recorder is installed), so that they are
/// exported before the first check.
pub fn register_metrics() {
    metrics::counter!(CHECKS_TOTAL).increment(0);
    metrics::counter!(MISMATCH_TOTAL).increment(0);
    metrics::gauge!(LAST_OK).set(1.0);
}

/// First bytes of a check entry (write commands start with their format byte, 1).
const CHECK_MAGIC: &[u8] = b"\xC5nokv-check";

/// The raft entry payload of a consistency check.
pub fn encode_check() -> Vec<u8> {
    CHECK_MAGIC.to_vec()
}

/// Whether a raft entry payload is a consistency check.
pub fn is_check(data: &[u8]) -> bool {
    data == CHECK_MAGIC
}

/// The periodic check interval from the environment (`NOKV_CONSISTENCY_CHECK_SECS`).
pub fn check_interval() -> Option<Duration> {
    match std::env::var("NOKV_CONSISTENCY_CHECK_SECS") {
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(0) => None,
            Ok(n) => Some(Duration::from_secs(n)),
            Err(_) => {
                tracing::warn!(value = %v, "NOKV_CONSISTENCY_CHECK_SECS is not a number; using the default");
                Some(DEFAULT_CHECK_INTERVAL)
            }
        },
        Err(_) => Some(DEFAULT_CHECK_INTERVAL),
    }
}

/// A check entry applied by a replica: the region, the entry's index, and the engine
/// snapshot pinned right after every write before it was applied.
pub struct PendingHash {
    /// The region as the replica knew it.
    pub desc: RegionDescriptor,
    /// Index of the check entry.
    pub index: u64,
    /// The engine at that applied index.
    pub snapshot: nokv::Snapshot,
}

/// FNV-1a, 64 bits: stable across processes and builds.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn feed(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn feed_field(&mut self, bytes: &[u8]) {
        self.feed(&(bytes.len() as u64).to_le_bytes());
        self.feed(bytes);
    }
}

/// Hashes every key and value of the region's data (all its column families) in
/// `pending`'s snapshot. File IO: call on the blocking pool.
pub fn hash_region(db: &Db, pending: &PendingHash) -> Result<u64, nokv::Error> {
    let mut h = Fnv::new();
    for range in layout::region_data(&pending.desc) {
        for &cf in range.cfs {
            let space = KeySpace {
                ns: range.range.ns,
                cf,
            };
            // Each replica's transaction GC drops long values of collected records when its
            // compactions come: the values the newest write records refer to are hashed
            // with them instead.
            if space == TXN_VALUES {
                continue;
            }
            let ro = ReadOptions {
                lower_bound: Some(range.range.start.clone()),
                upper_bound: range.range.end.clone(),
                snapshot: Some(pending.snapshot.clone()),
                skip_cache_fill: true,
                ..ReadOptions::default()
            };
            let mut it = db.iter_in(space, ro)?;
            it.seek_to_first();
            h.feed(&[cf]);
            // A transactional delete record as a key's newest reads like no record: each
            // replica's transaction GC drops it when its compaction reaches the bottom.
            let txn_writes = space == KeySpace::new(nokv::NS_KV, nokv::CF_WRITE);
            // Bounded by the region's data.
            while it.valid() {
                if !(txn_writes && it.value().first() == Some(&b'D')) {
                    h.feed_field(it.key());
                    h.feed_field(it.value());
                }
                if txn_writes {
                    if let Some(value) = long_value(db, pending, it.key(), it.value())? {
                        h.feed_field(&value);
                    }
                }
                it.next();
            }
        }
    }
    Ok(h.0)
}

/// `NS_KV`'s long values (`CF_DEFAULT`).
const TXN_VALUES: KeySpace = KeySpace::new(nokv::NS_KV, nokv::CF_DEFAULT);

/// The long value a transactional put record `record` of `key` refers to, in `pending`'s
/// snapshot (None: no such record, or a short value it carries itself).
fn long_value(
    db: &Db,
    pending: &PendingHash,
    key: &[u8],
    record: &[u8],
) -> Result<Option<Vec<u8>>, nokv::Error> {
    let Ok(w) = nokv::txn::Write::decode(record) else {
        return Ok(None);
    };
    if w.kind != nokv::txn::WriteKind::Put || w.short_value.is_some() {
        return Ok(None);
    }
    let ro = ReadOptions {
        read_ts: Some(w.start_ts),
        snapshot: Some(pending.snapshot.clone()),
        skip_cache_fill: true,
        ..ReadOptions::default()
    };
    Ok(db
        .get_entry(TXN_VALUES, key, &ro)?
        .filter(|e| e.version == w.start_ts)
        .map(|e| e.value))
}

/// Counts the engine keys of the region's data (all its column families, every key
/// whose newest version is live) in `db` as of now. File IO: call on the blocking pool.
pub fn count_keys(db: &Db, desc: &RegionDescriptor) -> Result<u64, nokv::Error> {
    let mut n = 0;
    for range in layout::region_data(desc) {
        for &cf in range.cfs {
            let space = KeySpace {
                ns: range.range.ns,
                cf,
            };
            let ro = ReadOptions {
                lower_bound: Some(range.range.start.clone()),
                upper_bound: range.range.end.clone(),
                skip_cache_fill: true,
                ..ReadOptions::default()
            };
            let mut it = db.iter_in(space, ro)?;
            it.seek_to_first();
            // Bounded by the region's data.
            while it.valid() {
                n += 1;
                it.next();
            }
        }
    }
    Ok(n)
}

/// The latest check hash of every region a store holds, and the last verdict of every
/// region whose check it led. Shared by the store's cores; the lock is held only to read
/// or replace an entry.
#[derive(Debug, Default)]
pub struct CheckBook {
    hashes: Mutex<HashMap<u64, (u64, u64)>>,
    verdicts: Mutex<HashMap<u64, String>>,
}

impl CheckBook {
    /// Records this replica's hash of `region` at check index `index`.
    pub fn record(&self, region: u64, index: u64, hash: u64) {
        if let Ok(mut m) = self.hashes.lock() {
            let e = m.entry(region).or_insert((index, hash));
            if index >= e.0 {
                *e = (index, hash);
            }
        }
    }

    /// This replica's hash of `region` at check index `index`, once computed.
    pub fn hash_at(&self, region: u64, index: u64) -> Option<u64> {
        let m = self.hashes.lock().ok()?;
        m.get(&region).filter(|(i, _)| *i == index).map(|(_, h)| *h)
    }

    /// The latest (index, hash) of `region`.
    pub fn latest(&self, region: u64) -> Option<(u64, u64)> {
        self.hashes.lock().ok()?.get(&region).copied()
    }

    /// Records the verdict of a check of `region` led here.
    pub fn set_verdict(&self, region: u64, verdict: String) {
        if let Ok(mut m) = self.verdicts.lock() {
            m.insert(region, verdict);
        }
    }

    /// The last verdict of a check of `region` led here.
    pub fn verdict(&self, region: u64) -> Option<String> {
        self.verdicts.lock().ok()?.get(&region).cloned()
    }
}

/// Why another store's hash could not be had.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Connecting, writing or reading failed.
    #[error("query store at {addr}: {source}")]
    Io {
        /// The store's Redis address.
        addr: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// The store answered something else than a hash.
    #[error("store at {addr} answered {reply:?}")]
    Reply {
        /// The store's Redis address.
        addr: String,
        /// Its reply line.
        reply: String,
    },
}

/// Asks the store at `addr` (its Redis port) for its hash of `region` at check `index`
/// (`NOKV.REGION HASH`), logged in with `auth` (AUTH's arguments), over TLS with `tls`
/// (`--tls-cluster`: the Redis port serves the store's certificate, checked against the
/// cluster's CA); Ok(None) while it has not computed it yet. Blocking: run it on the
/// blocking pool.
pub fn query_hash(
    addr: &str,
    auth: Option<&[Vec<u8>]>,
    tls: Option<&crate::tls::ClusterTls>,
    region: u64,
    index: u64,
) -> Result<Option<u64>, QueryError> {
    let io = |source: std::io::Error| QueryError::Io {
        addr: addr.to_string(),
        source,
    };
    let sock: std::net::SocketAddr = addr.parse().map_err(|e| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{e}"),
        ))
    })?;
    let stream = std::net::TcpStream::connect_timeout(&sock, QUERY_TIMEOUT).map_err(io)?;
    stream.set_read_timeout(Some(QUERY_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(QUERY_TIMEOUT)).map_err(io)?;
    let mut out = Vec::new();
    let mut command = |args: &[&[u8]]| {
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
    };
    if let Some(auth) = auth {
        let mut args: Vec<&[u8]> = vec![b"AUTH"];
        args.extend(auth.iter().map(Vec::as_slice));
        command(&args);
    }
    let (r, i) = (region.to_string(), index.to_string());
    command(&[b"NOKV.REGION", b"HASH", r.as_bytes(), i.as_bytes()]);
    let line = match tls {
        None => exchange(stream, &out, auth.is_some()),
        Some(tls) => tls
            .connect_blocking(stream, sock)
            .and_then(|s| exchange(s, &out, auth.is_some())),
    }
    .map_err(io)?;
    let line = line.trim_end();
    if let Some(rest) = line.strip_prefix('+') {
        if let Some(h) = rest.strip_prefix("HASH ") {
            if let Ok(h) = u64::from_str_radix(h.trim(), 16) {
                return Ok(Some(h));
            }
        }
        if rest == "PENDING" {
            return Ok(None);
        }
    }
    Err(QueryError::Reply {
        addr: addr.to_string(),
        reply: line.chars().take(200).collect(),
    })
}

/// Writes `out` on `stream` and reads the reply line of its last command (the one
/// before it, AUTH's, skipped with `auth`).
fn exchange(mut stream: impl Read + Write, out: &[u8], auth: bool) -> std::io::Result<String> {
    stream.write_all(out)?;
    stream.flush()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if auth {
        reader.read_line(&mut line)?;
        line.clear();
    }
    reader.read_line(&mut line)?;
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_entries_are_not_write_commands() {
        assert!(is_check(&encode_check()));
        assert!(!is_check(&[1, 2, 3]));
        assert_ne!(encode_check()[0], 1);
    }

    #[test]
    fn the_book_keeps_the_latest_hash() {
        let b = CheckBook::default();
        b.record(3, 10, 7);
        b.record(3, 9, 8);
        assert_eq!(b.hash_at(3, 10), Some(7));
        assert_eq!(b.hash_at(3, 9), None);
        b.record(3, 12, 9);
        assert_eq!(b.latest(3), Some((12, 9)));
    }
}

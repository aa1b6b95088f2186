//! The small storage interface the benchmarks drive, and an in-memory implementation.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::RwLock;

use crate::error::{BenchError, Result};

/// File written into every database directory this tool creates, so that a later
/// fresh run may delete the directory without risking unrelated data.
pub const MARKER_FILE: &str = "NOKV_BENCH_DB";

/// Engine counters the harness reports (bytes are cumulative since open).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStats {
    /// Key and value bytes accepted from the user.
    pub user_bytes: u64,
    /// Bytes appended to the write-ahead log.
    pub wal_bytes: u64,
    /// Bytes the write path appended to the value log (NoKV; 0 elsewhere).
    pub vlog_write_bytes: u64,
    /// Bytes written by memtable flushes.
    pub flush_bytes: u64,
    /// Bytes written by compactions.
    pub compaction_bytes: u64,
    /// The engine's own write amplification figure.
    pub write_amplification: f64,
    /// WAL fdatasync calls.
    pub wal_syncs: u64,
    /// Time writers spent stalled, in microseconds.
    pub stall_micros: u64,
    /// Block cache hits.
    pub cache_hits: u64,
    /// Block cache misses.
    pub cache_misses: u64,
    /// (files, bytes) per level, L0 first.
    pub levels: Vec<(usize, u64)>,
}

impl EngineStats {
    /// Write amplification over the interval since `before`:
    /// (flush + compaction bytes) / user bytes, RocksDB's definition (WAL excluded).
    pub fn write_amp_since(&self, before: &EngineStats) -> Option<f64> {
        let user = self.user_bytes.saturating_sub(before.user_bytes);
        if user == 0 {
            return None;
        }
        let written = self.flush_bytes.saturating_sub(before.flush_bytes)
            + self
                .compaction_bytes
                .saturating_sub(before.compaction_bytes);
        Some(written as f64 / user as f64)
    }
}

/// What `seek_next` observed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeekResult {
    /// The iterator landed exactly on the sought key.
    pub found: bool,
    /// Key plus value bytes of the entries stepped over by the nexts.
    pub bytes: u64,
}

/// What `scan` observed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanResult {
    /// Entries visited.
    pub entries: u64,
    /// Key plus value bytes visited.
    pub bytes: u64,
}

/// The operations db_bench's workloads need from a storage engine.
pub trait BenchDb: Send + Sync {
    /// Writes one key (a one-entry batch, as db_bench does); `sync` makes it durable first.
    fn put(&self, key: &[u8], value: &[u8], sync: bool) -> Result<()>;
    /// Point lookup.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Opens a fresh iterator, seeks to `key`, then calls next up to `nexts` times.
    fn seek_next(&self, key: &[u8], nexts: u64) -> Result<SeekResult>;
    /// Iterates from the first key, visiting at most `limit` entries.
    fn scan(&self, limit: u64) -> Result<ScanResult>;
    /// Flushes the memtable and waits until no flush or compaction is pending.
    fn flush_and_wait(&self) -> Result<()>;
    /// Current counters.
    fn stats(&self) -> EngineStats;
    /// The engine's own human-readable statistics.
    fn stats_text(&self) -> String;
    /// Closes the database cleanly.
    fn close(self: Box<Self>) -> Result<()>;
}

/// A `BTreeMap` behind a lock: exercises the harness and measures its own overhead.
#[derive(Default)]
pub struct MemDb {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
    user_bytes: std::sync::atomic::AtomicU64,
}

impl MemDb {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> Result<std::sync::RwLockReadGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>>> {
        self.map
            .read()
            .map_err(|_| BenchError::engine("read lock", "poisoned"))
    }
}

impl BenchDb for MemDb {
    fn put(&self, key: &[u8], value: &[u8], _sync: bool) -> Result<()> {
        let mut m = self
            .map
            .write()
            .map_err(|_| BenchError::engine("write lock", "poisoned"))?;
        m.insert(key.to_vec(), value.to_vec());
        self.user_bytes.fetch_add(
            (key.len() + value.len()) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(())
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.read()?.get(key).cloned())
    }

    fn seek_next(&self, key: &[u8], nexts: u64) -> Result<SeekResult> {
        let m = self.read()?;
        let mut it = m.range(key.to_vec()..);
        let mut cur = it.next();
        let found = cur.is_some_and(|(k, _)| k.as_slice() == key);
        let mut bytes = 0;
        for _ in 0..nexts {
            let Some((k, v)) = cur else { break };
            bytes += (k.len() + v.len()) as u64;
            cur = it.next();
        }
        Ok(SeekResult { found, bytes })
    }

    fn scan(&self, limit: u64) -> Result<ScanResult> {
        let m = self.read()?;
        let mut r = ScanResult::default();
        for (k, v) in m.iter().take(usize::try_from(limit).unwrap_or(usize::MAX)) {
            r.entries += 1;
            r.bytes += (k.len() + v.len()) as u64;
        }
        Ok(r)
    }

    fn flush_and_wait(&self) -> Result<()> {
        Ok(())
    }

    fn stats(&self) -> EngineStats {
        EngineStats {
            user_bytes: self.user_bytes.load(std::sync::atomic::Ordering::Relaxed),
            ..EngineStats::default()
        }
    }

    fn stats_text(&self) -> String {
        let n = self.read().map(|m| m.len()).unwrap_or(0);
        format!("memdb: {n} keys")
    }

    fn close(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

/// Deletes a database directory for a fresh run, but only if it is empty or was created
/// by this tool (has [`MARKER_FILE`]); a missing directory is fine.
pub fn destroy_db_dir(path: &Path) -> Result<()> {
    let mut entries = match std::fs::read_dir(path) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(BenchError::io("reading directory", path, e)),
    };
    let empty = entries.next().is_none();
    if !empty && !path.join(MARKER_FILE).exists() {
        return Err(BenchError::NotABenchDb(path.to_path_buf()));
    }
    std::fs::remove_dir_all(path).map_err(|e| BenchError::io("removing database", path, e))
}

/// Creates the database directory (and parents) and drops the marker file in it.
pub fn prepare_db_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| BenchError::io("creating directory", path, e))?;
    let marker = path.join(MARKER_FILE);
    std::fs::write(&marker, b"created by nokv-bench dbbench\n")
        .map_err(|e| BenchError::io("writing marker", marker, e))
}

/// Expectations every engine adapter must meet: 2000 even keys with 1000-byte values,
/// point reads, seeks with nexts, and scans.
#[cfg(test)]
pub(crate) fn check_adapter(
    db: &dyn BenchDb,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let mut key = Vec::new();
    for i in 0..2000u64 {
        crate::gen::key_from_int(i * 2, 16, &mut key);
        db.put(&key, &[b'v'; 1000], i % 500 == 0)?;
    }
    db.flush_and_wait()?;
    let s = db.stats();
    assert_eq!(s.user_bytes, 2000 * 1016);
    assert!(s.levels.iter().map(|l| l.0).sum::<usize>() > 0);
    crate::gen::key_from_int(10, 16, &mut key);
    assert_eq!(db.get(&key)?.map(|v| v.len()), Some(1000));
    crate::gen::key_from_int(11, 16, &mut key);
    assert_eq!(db.get(&key)?, None);
    // 11 is missing: the seek lands on 12, and three nexts read three entries.
    let r = db.seek_next(&key, 3)?;
    assert_eq!(
        r,
        SeekResult {
            found: false,
            bytes: 3 * 1016
        }
    );
    crate::gen::key_from_int(3998, 16, &mut key);
    assert_eq!(
        db.seek_next(&key, 5)?,
        SeekResult {
            found: true,
            bytes: 1016
        }
    );
    assert_eq!(
        db.seek_next(&key, 0)?,
        SeekResult {
            found: true,
            bytes: 0
        }
    );
    assert_eq!(db.scan(u64::MAX)?.entries, 2000);
    assert_eq!(db.scan(7)?.entries, 7);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memdb_seek_and_scan() -> Result<()> {
        let db = MemDb::new();
        for k in [b"a", b"c", b"e"] {
            db.put(k, b"vv", false)?;
        }
        assert_eq!(db.get(b"c")?, Some(b"vv".to_vec()));
        assert_eq!(db.get(b"b")?, None);
        assert_eq!(
            db.seek_next(b"c", 5)?,
            SeekResult {
                found: true,
                bytes: 6
            }
        );
        assert_eq!(
            db.seek_next(b"b", 1)?,
            SeekResult {
                found: false,
                bytes: 3
            }
        );
        assert_eq!(db.seek_next(b"z", 1)?, SeekResult::default());
        assert_eq!(
            db.scan(2)?,
            ScanResult {
                entries: 2,
                bytes: 6
            }
        );
        assert_eq!(db.stats().user_bytes, 9);
        Ok(())
    }

    #[test]
    fn write_amp_interval() {
        let a = EngineStats {
            user_bytes: 100,
            flush_bytes: 50,
            compaction_bytes: 10,
            ..Default::default()
        };
        let b = EngineStats {
            user_bytes: 300,
            flush_bytes: 250,
            compaction_bytes: 210,
            ..Default::default()
        };
        assert_eq!(b.write_amp_since(&a), Some(2.0));
        assert_eq!(a.write_amp_since(&a), None);
    }

    #[test]
    fn destroy_refuses_foreign_dirs() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let foreign = tmp.path().join("foreign");
        std::fs::create_dir(&foreign)?;
        std::fs::write(foreign.join("precious"), b"x")?;
        assert!(matches!(
            destroy_db_dir(&foreign),
            Err(BenchError::NotABenchDb(_))
        ));
        assert!(foreign.join("precious").exists());
        let ours = tmp.path().join("ours");
        prepare_db_dir(&ours)?;
        std::fs::write(ours.join("000001.sst"), b"x")?;
        destroy_db_dir(&ours)?;
        assert!(!ours.exists());
        destroy_db_dir(&ours)?; // missing is fine
        Ok(())
    }
}

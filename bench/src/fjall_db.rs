//! [`BenchDb`] over the `fjall` crate (3.x), configured like NoKV for the benchmarks.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fjall::config::{BloomConstructionPolicy, CompressionPolicy, FilterPolicy, FilterPolicyEntry};
use fjall::{CompressionType, Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::db::{BenchDb, EngineStats, ScanResult, SeekResult};
use crate::error::{BenchError, Result};
use crate::flags::CompressionType as FlagCompression;
use crate::runner::EngineConfig;

/// The fjall release this adapter was written against (the workspace pins it).
pub const FJALL_VERSION: &str = "3.1.13";

/// Name of the single keyspace the benchmarks use.
const KEYSPACE: &str = "bench";

/// Bloom bits per key when the settings leave it to the engine (NoKV's default).
const DEFAULT_BLOOM_BITS: usize = 10;

fn bloom_bits(cfg: &EngineConfig) -> usize {
    cfg.bloom_bits.unwrap_or(DEFAULT_BLOOM_BITS)
}

fn keyspace_options(cfg: &EngineConfig) -> Result<KeyspaceCreateOptions> {
    if cfg.compression != FlagCompression::None {
        return Err(BenchError::Flag(
            "fjall is built without its lz4 feature: only compression none".into(),
        ));
    }
    let filter = match bloom_bits(cfg) {
        0 => FilterPolicy::disabled(),
        bits => FilterPolicy::all(FilterPolicyEntry::Bloom(
            BloomConstructionPolicy::BitsPerKey(bits as f32),
        )),
    };
    Ok(KeyspaceCreateOptions::default()
        .max_memtable_size(cfg.write_buffer_bytes as u64)
        .data_block_compression_policy(CompressionPolicy::all(CompressionType::None))
        .index_block_compression_policy(CompressionPolicy::all(CompressionType::None))
        .filter_policy(filter))
}

/// The effective fjall settings, for the settings header.
pub fn describe(cfg: &EngineConfig) -> String {
    let workers = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
        .min(4);
    format!(
        "fjall {FJALL_VERSION} {{ cache_size: {}, max_memtable_size: {}, durability: {}, \
data_block_compression: None, index_block_compression: None, filter: bloom {} bits/key (all levels), \
data_block_size: 4096 (default), compaction: Leveled (default), worker_threads: {workers} (default), \
max_journaling_size: 512 MiB (default) }}",
        cfg.block_cache_bytes,
        cfg.write_buffer_bytes,
        if cfg.sync {
            "insert + Database::persist(SyncData) per write"
        } else {
            "insert, journal flushed to the OS per write (PersistMode::Buffer, default)"
        },
        bloom_bits(cfg),
    )
}

/// An open fjall database with one keyspace.
pub struct FjallDb {
    db: Database,
    ks: Keyspace,
    sync: bool,
    user_bytes: AtomicU64,
}

impl FjallDb {
    /// Opens (creating if missing) the database at `path`.
    pub fn open(path: &Path, cfg: &EngineConfig) -> Result<Self> {
        let ks_opts = keyspace_options(cfg)?;
        let db = Database::builder(path)
            .cache_size(cfg.block_cache_bytes as u64)
            .open()
            .map_err(|e| BenchError::engine("fjall open", e))?;
        let ks = db
            .keyspace(KEYSPACE, || ks_opts)
            .map_err(|e| BenchError::engine("fjall keyspace", e))?;
        Ok(FjallDb {
            db,
            ks,
            sync: cfg.sync,
            user_bytes: AtomicU64::new(0),
        })
    }
}

/// Polls of the background-work counters in [`FjallDb::flush_and_wait`] (10 ms apart).
const SETTLE_POLLS: u32 = 60_000;
/// Consecutive idle polls that count as settled.
const SETTLE_IDLE_POLLS: u32 = 20;

impl BenchDb for FjallDb {
    fn put(&self, key: &[u8], value: &[u8], sync: bool) -> Result<()> {
        self.ks
            .insert(key, value)
            .map_err(|e| BenchError::engine("fjall insert", e))?;
        if sync || self.sync {
            self.db
                .persist(PersistMode::SyncData)
                .map_err(|e| BenchError::engine("fjall persist", e))?;
        }
        self.user_bytes
            .fetch_add((key.len() + value.len()) as u64, Ordering::Relaxed);
        Ok(())
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.ks
            .get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| BenchError::engine("fjall get", e))
    }

    fn seek_next(&self, key: &[u8], nexts: u64) -> Result<SeekResult> {
        let mut it = self.ks.range(key..);
        let mut r = SeekResult::default();
        for i in 0..nexts.max(1) {
            let Some(g) = it.next() else { break };
            let (k, v) = g
                .into_inner()
                .map_err(|e| BenchError::engine("fjall seek", e))?;
            if i == 0 {
                r.found = &*k == key;
            }
            if i < nexts {
                r.bytes += (k.len() + v.len()) as u64;
            }
        }
        Ok(r)
    }

    fn scan(&self, limit: u64) -> Result<ScanResult> {
        let mut r = ScanResult::default();
        let mut it = self.ks.iter();
        while r.entries < limit {
            let Some(g) = it.next() else { break };
            let (k, v) = g
                .into_inner()
                .map_err(|e| BenchError::engine("fjall scan", e))?;
            r.entries += 1;
            r.bytes += (k.len() + v.len()) as u64;
        }
        Ok(r)
    }

    fn flush_and_wait(&self) -> Result<()> {
        // fjall 3 has no public "wait for compaction": flush the memtable, then poll its
        // background counters until they stay idle for SETTLE_IDLE_POLLS polls.
        self.ks
            .rotate_memtable_and_wait()
            .map_err(|e| BenchError::engine("fjall flush", e))?;
        let mut idle = 0;
        for _ in 0..SETTLE_POLLS {
            if self.db.outstanding_flushes() == 0 && self.db.active_compactions() == 0 {
                idle += 1;
                if idle >= SETTLE_IDLE_POLLS {
                    return Ok(());
                }
            } else {
                idle = 0;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(BenchError::engine(
            "fjall flush_and_wait",
            "background work still running after 10 minutes",
        ))
    }

    fn stats(&self) -> EngineStats {
        EngineStats {
            user_bytes: self.user_bytes.load(Ordering::Relaxed),
            levels: vec![
                (self.ks.l0_table_count(), 0),
                (
                    self.ks
                        .table_count()
                        .saturating_sub(self.ks.l0_table_count()),
                    0,
                ),
            ],
            ..EngineStats::default()
        }
    }

    fn stats_text(&self) -> String {
        format!(
            "fjall: tables {} (L0 {}), disk {} bytes, journals {}, cache {} of {} bytes, compactions completed {}",
            self.ks.table_count(),
            self.ks.l0_table_count(),
            self.ks.disk_space(),
            self.db.journal_count(),
            self.db.cache_size(),
            self.db.cache_capacity(),
            self.db.compactions_completed(),
        )
    }

    fn close(self: Box<Self>) -> Result<()> {
        let FjallDb { db, ks, .. } = *self;
        db.persist(PersistMode::SyncAll)
            .map_err(|e| BenchError::engine("fjall close", e))?;
        drop(ks);
        drop(db);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> EngineConfig {
        EngineConfig {
            sync: false,
            write_buffer_bytes: 1 << 20,
            block_cache_bytes: 1 << 20,
            bloom_bits: None,
            compression: FlagCompression::None,
            create_if_missing: true,
            vlog_on_write: true,
            vlog_gc_ratio: 0.0,
            vlog_gc_space_amp: 0.0,
            relaxed_sync_bytes: 0,
        }
    }

    #[test]
    fn adapter_round_trip() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let db = Box::new(FjallDb::open(dir.path(), &cfg())?);
        crate::db::check_adapter(&*db)?;
        assert!(db.stats_text().contains("fjall"));
        db.close()?;
        // Reopens with the data.
        let db = Box::new(FjallDb::open(dir.path(), &cfg())?);
        assert_eq!(db.scan(u64::MAX)?.entries, 2000);
        db.close()?;
        Ok(())
    }

    #[test]
    fn settings_follow_config() {
        let mut c = cfg();
        c.sync = true;
        let d = describe(&c);
        assert!(d.contains("cache_size: 1048576"), "{d}");
        assert!(d.contains("SyncData"), "{d}");
        assert!(d.contains("10 bits/key"), "{d}");
        c.compression = FlagCompression::Lz4;
        assert!(keyspace_options(&c).is_err());
    }
}

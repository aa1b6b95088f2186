//! [`BenchDb`] over the NoKV engine.

use std::path::Path;

use nokv::{Compression, Db, Durability, Options, ReadOptions, WriteOptions};

use crate::db::{BenchDb, EngineStats, ScanResult, SeekResult};
use crate::error::{BenchError, Result};
use crate::flags::CompressionType;
use crate::runner::EngineConfig;

/// NoKV options for the benchmark settings (engine defaults for everything else).
pub fn options(cfg: &EngineConfig) -> Options {
    let mut o = Options {
        create_if_missing: cfg.create_if_missing,
        durability: if cfg.sync {
            Durability::Sync
        } else {
            Durability::Relaxed
        },
        write_buffer_bytes: cfg.write_buffer_bytes,
        block_cache_bytes: cfg.block_cache_bytes,
        vlog_on_write: cfg.vlog_on_write,
        compression_per_level: vec![match cfg.compression {
            CompressionType::None => Compression::None,
            CompressionType::Lz4 => Compression::Lz4,
        }],
        ..Options::default()
    };
    if let Some(bits) = cfg.bloom_bits {
        o.bloom_bits_per_key = bits;
    }
    if cfg.vlog_gc_ratio > 0.0 {
        o.vlog_gc_min_discard_ratio = cfg.vlog_gc_ratio;
    }
    if cfg.vlog_gc_space_amp > 0.0 {
        o.vlog_gc_space_amp = cfg.vlog_gc_space_amp;
    }
    if cfg.relaxed_sync_bytes > 0 {
        o.relaxed_sync_interval_bytes = cfg.relaxed_sync_bytes;
    }
    o
}

/// The effective NoKV options, for the settings header.
pub fn describe(cfg: &EngineConfig) -> String {
    format!("{:?}", options(cfg))
}

/// An open NoKV database.
pub struct NokvDb {
    db: Db,
    write_opts: WriteOptions,
}

impl NokvDb {
    /// Opens (creating if missing) the database at `path`.
    pub fn open(path: &Path, cfg: &EngineConfig) -> Result<Self> {
        let opts = options(cfg);
        let durability = opts.durability;
        let db = Db::open(path, opts).map_err(|e| BenchError::engine("open", e))?;
        Ok(NokvDb {
            db,
            write_opts: WriteOptions {
                durability: Some(durability),
            },
        })
    }
}

impl BenchDb for NokvDb {
    fn put(&self, key: &[u8], value: &[u8], sync: bool) -> Result<()> {
        let opts = if sync {
            WriteOptions {
                durability: Some(Durability::Sync),
            }
        } else {
            self.write_opts
        };
        self.db
            .put_opt(key, value, &opts)
            .map_err(|e| BenchError::engine("put", e))
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get(key).map_err(|e| BenchError::engine("get", e))
    }

    fn seek_next(&self, key: &[u8], nexts: u64) -> Result<SeekResult> {
        let mut it = self
            .db
            .iter(ReadOptions::default())
            .map_err(|e| BenchError::engine("iter", e))?;
        it.seek(key);
        let found = it.valid() && it.key() == key;
        let mut bytes = 0u64;
        for _ in 0..nexts {
            if !it.valid() {
                break;
            }
            bytes += (it.key().len() + it.value().len()) as u64;
            it.next();
        }
        it.status().map_err(|e| BenchError::engine("seek", e))?;
        Ok(SeekResult { found, bytes })
    }

    fn scan(&self, limit: u64) -> Result<ScanResult> {
        let mut it = self
            .db
            .iter(ReadOptions::default())
            .map_err(|e| BenchError::engine("iter", e))?;
        it.seek_to_first();
        let mut r = ScanResult::default();
        while r.entries < limit && it.valid() {
            r.entries += 1;
            r.bytes += (it.key().len() + it.value().len()) as u64;
            it.next();
        }
        it.status().map_err(|e| BenchError::engine("scan", e))?;
        Ok(r)
    }

    fn flush_and_wait(&self) -> Result<()> {
        self.db
            .flush()
            .map_err(|e| BenchError::engine("flush", e))?;
        self.db
            .wait_for_compaction()
            .map_err(|e| BenchError::engine("wait_for_compaction", e))
    }

    fn stats(&self) -> EngineStats {
        let s = self.db.stats();
        EngineStats {
            user_bytes: s.user_bytes,
            wal_bytes: s.wal_bytes,
            vlog_write_bytes: s.vlog_write_bytes,
            flush_bytes: s.flush_bytes,
            compaction_bytes: s.compaction_bytes_written,
            write_amplification: s.write_amplification,
            wal_syncs: s.wal_syncs,
            stall_micros: s.stall_micros,
            cache_hits: s.block_cache_hits,
            cache_misses: s.block_cache_misses,
            levels: s.levels.iter().map(|l| (l.files, l.bytes)).collect(),
        }
    }

    fn stats_text(&self) -> String {
        self.db.stats().to_string()
    }

    fn close(self: Box<Self>) -> Result<()> {
        self.db.close().map_err(|e| BenchError::engine("close", e))
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
            bloom_bits: Some(10),
            compression: CompressionType::None,
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
        let db = Box::new(NokvDb::open(dir.path(), &cfg())?);
        crate::db::check_adapter(&*db)?;
        assert!(db.stats().flush_bytes > 0);
        assert!(!db.stats_text().is_empty());
        db.close()?;
        Ok(())
    }

    #[test]
    fn options_follow_flags() {
        let mut c = cfg();
        c.sync = true;
        c.bloom_bits = None;
        c.compression = CompressionType::Lz4;
        let o = options(&c);
        assert_eq!(o.durability, Durability::Sync);
        assert_eq!(o.bloom_bits_per_key, Options::default().bloom_bits_per_key);
        assert_eq!(o.compression_per_level, vec![Compression::Lz4]);
        assert_eq!(o.write_buffer_bytes, 1 << 20);
        assert_eq!(o.block_cache_bytes, 1 << 20);
        assert!(describe(&c).contains("Sync"));
    }
}

//! Counters the engine keeps, and the [`Stats`] snapshot returned by `Db::stats()`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, updated with relaxed atomics and mirrored to the `metrics` facade.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub user_bytes: AtomicU64,
    pub user_writes: AtomicU64,
    pub wal_bytes: AtomicU64,
    pub wal_syncs: AtomicU64,
    pub wal_groups: AtomicU64,
    pub wal_group_writes: AtomicU64,
    pub flushes: AtomicU64,
    pub flush_bytes: AtomicU64,
    pub flush_micros: AtomicU64,
    pub compactions: AtomicU64,
    pub trivial_moves: AtomicU64,
    pub compaction_bytes_read: AtomicU64,
    pub compaction_bytes_written: AtomicU64,
    pub compaction_micros: AtomicU64,
    pub stall_micros: AtomicU64,
    pub slowdowns: AtomicU64,
    pub background_errors: AtomicU64,
    pub range_del_files_dropped: AtomicU64,
    pub range_del_bytes_dropped: AtomicU64,
    pub txn_records_collected: AtomicU64,
    pub txn_values_collected: AtomicU64,
    pub vlog_values_separated: AtomicU64,
    pub vlog_bytes_separated: AtomicU64,
    pub vlog_segments_created: AtomicU64,
    pub vlog_bytes_written: AtomicU64,
    pub vlog_gc_rounds: AtomicU64,
    pub vlog_gc_segments: AtomicU64,
    pub vlog_gc_bytes_scanned: AtomicU64,
    pub vlog_gc_bytes_rewritten: AtomicU64,
    pub vlog_gc_bytes_reclaimed: AtomicU64,
    pub vlog_gc_deferred: AtomicU64,
    pub vlog_write_values: AtomicU64,
    pub vlog_write_bytes: AtomicU64,
    pub vlog_write_syncs: AtomicU64,
    pub vlog_segments_reused: AtomicU64,
    pub relaxed_sync_waits: AtomicU64,
    pub relaxed_sync_wait_micros: AtomicU64,
}

impl Counters {
    /// Adds `v` to counter `c` and to the metric `name`.
    pub fn add(c: &AtomicU64, name: &'static str, v: u64) {
        c.fetch_add(v, Ordering::Relaxed);
        metrics::counter!(name).increment(v);
    }
}

/// Files and bytes in one level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LevelStats {
    /// Number of SST files.
    pub files: usize,
    /// Total bytes of those files.
    pub bytes: u64,
}

/// A point-in-time snapshot of engine statistics.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Key and value bytes written by callers.
    pub user_bytes: u64,
    /// Write operations (batch entries) by callers.
    pub user_writes: u64,
    /// Bytes appended to the WAL.
    pub wal_bytes: u64,
    /// fdatasync calls on the WAL.
    pub wal_syncs: u64,
    /// Group commits (WAL writes), each carrying one or more batches.
    pub wal_groups: u64,
    /// Batches committed through group commits.
    pub wal_group_writes: u64,
    /// Memtable flushes.
    pub flushes: u64,
    /// Bytes written by flushes.
    pub flush_bytes: u64,
    /// Time spent in flushes, microseconds.
    pub flush_micros: u64,
    /// Compactions that rewrote data.
    pub compactions: u64,
    /// Compactions that only moved a file to another level.
    pub trivial_moves: u64,
    /// Bytes of the compactions' input files (including files dropped unread, below).
    pub compaction_bytes_read: u64,
    /// Bytes written by compactions.
    pub compaction_bytes_written: u64,
    /// Time spent in compactions, microseconds.
    pub compaction_micros: u64,
    /// Time writers spent stalled or slowed, microseconds.
    pub stall_micros: u64,
    /// Write groups that were slowed down by L0 pressure.
    pub slowdowns: u64,
    /// Flush or compaction failures.
    pub background_errors: u64,
    /// SST bytes written per user byte: (flush + compaction writes) / user bytes.
    pub write_amplification: f64,
    /// Files and bytes per level.
    pub levels: Vec<LevelStats>,
    /// The level L0 compacts into.
    pub base_level: usize,
    /// Block cache hits.
    pub block_cache_hits: u64,
    /// Block cache misses.
    pub block_cache_misses: u64,
    /// Bytes held by the block cache.
    pub block_cache_bytes: u64,
    /// Bytes held by the active and frozen memtables.
    pub memtable_bytes: u64,
    /// Frozen memtables waiting for flush.
    pub immutable_memtables: usize,
    /// Live WAL segments.
    pub wal_segments: usize,
    /// Last published sequence number.
    pub last_sequence: u64,
    /// Files compactions deleted without reading them: a range delete covered them whole.
    pub range_del_files_dropped: u64,
    /// Bytes of those files.
    pub range_del_bytes_dropped: u64,
    /// `NS_KV` write records compactions dropped below the transaction safe point.
    pub txn_records_collected: u64,
    /// `NS_KV` long values (and rollback tombstones) compactions dropped below it.
    pub txn_values_collected: u64,
    /// Live value-log segments.
    pub vlog_segments: usize,
    /// Bytes of the live value-log segment files.
    pub vlog_bytes: u64,
    /// Record bytes of live segments not known to be garbage (an upper bound of live values).
    pub vlog_live_bytes: u64,
    /// Record bytes of live segments known to be garbage (dropped by compaction).
    pub vlog_garbage_bytes: u64,
    /// Values moved to the value log: at commit (the write path), by flushes and compactions.
    pub vlog_values_separated: u64,
    /// Bytes of those values.
    pub vlog_bytes_separated: u64,
    /// Value-log segments created (by flushes, compactions and GC).
    pub vlog_segments_created: u64,
    /// Bytes of value-log segments created.
    pub vlog_bytes_written: u64,
    /// Values read from the value log.
    pub vlog_reads: u64,
    /// Value-log GC rounds (each reads at most `Options::vlog_gc_bytes_per_round`).
    pub vlog_gc_rounds: u64,
    /// Segments collected by value-log GC.
    pub vlog_gc_segments: u64,
    /// Segment bytes value-log GC read.
    pub vlog_gc_bytes_scanned: u64,
    /// Record bytes value-log GC copied to new segments (live values).
    pub vlog_gc_bytes_rewritten: u64,
    /// Disk bytes value-log GC freed (collected segment size minus its replacement's).
    pub vlog_gc_bytes_reclaimed: u64,
    /// GC attempts postponed because a segment held values it could not yet move safely.
    pub vlog_gc_deferred: u64,
    /// Segments background GC would collect now: at or above the minimum discard ratio while
    /// the value log is over `Options::vlog_gc_space_amp` (GC work pending).
    pub vlog_gc_candidates: usize,
    /// Values the write path put in the value log at commit (the WAL logged their pointers).
    pub vlog_write_values: u64,
    /// Record bytes the write path appended to the value log.
    pub vlog_write_bytes: u64,
    /// fdatasync calls of the write path's value log (before WAL syncs).
    pub vlog_write_syncs: u64,
    /// Files of collected segments kept for the write path to reuse (not in `vlog_bytes`).
    pub vlog_segments_kept: usize,
    /// Write-path segments written into a collected segment's file.
    pub vlog_segments_reused: u64,
    /// Relaxed writes that found `relaxed_sync_interval_bytes` unsynced and waited for a
    /// sync (the background sync had not kept up).
    pub relaxed_sync_waits: u64,
    /// Time those writes waited, microseconds.
    pub relaxed_sync_wait_micros: u64,
    /// Bytes on disk of tables and value-log segments.
    pub disk_bytes: u64,
    /// Estimated live data: value-log records not known to be garbage plus the bytes of the
    /// largest level (which holds nearly all live keys of a leveled tree).
    pub live_bytes_estimate: u64,
}

impl Stats {
    /// Space amplification: bytes on disk per estimated live byte (0 when empty).
    pub fn space_amplification(&self) -> f64 {
        if self.live_bytes_estimate == 0 {
            0.0
        } else {
            self.disk_bytes as f64 / self.live_bytes_estimate as f64
        }
    }

    /// Block cache hit rate in [0, 1] (0 when nothing was read).
    pub fn block_cache_hit_rate(&self) -> f64 {
        let total = self.block_cache_hits + self.block_cache_misses;
        if total == 0 {
            0.0
        } else {
            self.block_cache_hits as f64 / total as f64
        }
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "level  files        bytes")?;
        for (i, l) in self.levels.iter().enumerate() {
            let mark = if i == self.base_level { " (base)" } else { "" };
            writeln!(f, "L{i:<5} {:>5} {:>12}{mark}", l.files, l.bytes)?;
        }
        writeln!(
            f,
            "writes: {} ops, {} user bytes, {} WAL bytes, {} syncs, {} groups ({:.1} batches/group)",
            self.user_writes,
            self.user_bytes,
            self.wal_bytes,
            self.wal_syncs,
            self.wal_groups,
            self.wal_group_writes as f64 / self.wal_groups.max(1) as f64
        )?;
        writeln!(
            f,
            "flush: {} runs, {} bytes, {} ms; compaction: {} runs (+{} moves), {} read, {} written, {} ms",
            self.flushes,
            self.flush_bytes,
            self.flush_micros / 1000,
            self.compactions,
            self.trivial_moves,
            self.compaction_bytes_read,
            self.compaction_bytes_written,
            self.compaction_micros / 1000
        )?;
        writeln!(
            f,
            "write amplification: {:.2}; stalls: {} ms ({} slowdowns); background errors: {}",
            self.write_amplification,
            self.stall_micros / 1000,
            self.slowdowns,
            self.background_errors
        )?;
        writeln!(
            f,
            "block cache: {} bytes, hit rate {:.3}; memtables: {} bytes ({} frozen); WAL segments: {}",
            self.block_cache_bytes,
            self.block_cache_hit_rate(),
            self.memtable_bytes,
            self.immutable_memtables,
            self.wal_segments
        )?;
        writeln!(
            f,
            "value log: {} segments, {} bytes ({} live, {} garbage); {} values separated, {} reads",
            self.vlog_segments,
            self.vlog_bytes,
            self.vlog_live_bytes,
            self.vlog_garbage_bytes,
            self.vlog_values_separated,
            self.vlog_reads
        )?;
        writeln!(
            f,
            "value log at commit: {} values, {} bytes, {} syncs, {} segments in reused files ({} kept); relaxed writes waited for a sync {} times, {} ms",
            self.vlog_write_values,
            self.vlog_write_bytes,
            self.vlog_write_syncs,
            self.vlog_segments_reused,
            self.vlog_segments_kept,
            self.relaxed_sync_waits,
            self.relaxed_sync_wait_micros / 1000
        )?;
        writeln!(
            f,
            "value-log GC: {} rounds, {} segments, {} scanned, {} rewritten, {} reclaimed, {} deferred, {} candidates",
            self.vlog_gc_rounds,
            self.vlog_gc_segments,
            self.vlog_gc_bytes_scanned,
            self.vlog_gc_bytes_rewritten,
            self.vlog_gc_bytes_reclaimed,
            self.vlog_gc_deferred,
            self.vlog_gc_candidates
        )?;
        write!(
            f,
            "space: {} bytes on disk (tables + value log), ~{} live, amplification {:.2}",
            self.disk_bytes,
            self.live_bytes_estimate,
            self.space_amplification()
        )
    }
}

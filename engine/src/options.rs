//! Tuning knobs for [`crate::Db`], with defaults sized for a small server.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::clock::{Clock, SystemClock};
use crate::fs::FileSystem;

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Acknowledge after the WAL record (and the value-log bytes it points at) is
    /// fdatasync'ed (no acknowledged write is lost).
    #[default]
    Sync,
    /// Acknowledge after the WAL record (and the value-log bytes it points at) is handed to
    /// the OS. A process crash loses nothing; a power loss or kernel crash loses the writes
    /// since the last sync, at most `Options::relaxed_sync_interval_bytes` of log.
    Relaxed,
}

/// Block compression for SST files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Blocks are stored as written.
    #[default]
    None,
    /// LZ4 block compression (kept only when it saves at least 1/8 of the block).
    Lz4,
}

/// Which IO backend the engine uses for its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoBackend {
    /// Plain positional syscalls.
    #[default]
    Std,
    /// WAL and SST writes and syncs submitted through io_uring.
    Uring,
}

/// Called for every opaque WAL record during recovery: (record type, payload).
pub type OpaqueReplay = Arc<dyn Fn(u8, &[u8]) + Send + Sync>;

/// Options for [`crate::Db::open`].
#[derive(Clone)]
pub struct Options {
    /// Create the directory and an empty database if none exists.
    pub create_if_missing: bool,
    /// Fail if a database already exists.
    pub error_if_exists: bool,
    /// Default durability of writes (overridable per write).
    pub durability: Durability,
    /// With `Relaxed` writes, at most this many logged bytes (WAL plus the values the write
    /// path put in the value log) are not yet fdatasynced: a background sync starts at half
    /// of it, a writer that finds all of it unsynced waits for a sync.
    pub relaxed_sync_interval_bytes: u64,
    /// Size at which the active memtable is frozen and flushed.
    pub write_buffer_bytes: usize,
    /// Frozen memtables waiting for flush before writes stop.
    pub max_immutable_memtables: usize,
    /// Size of one preallocated WAL segment.
    pub wal_segment_bytes: u64,
    /// Obsolete WAL segments kept for reuse instead of being deleted.
    pub wal_recycle_segments: usize,
    /// Target size of an uncompressed SST data block.
    pub block_bytes: usize,
    /// Keys between restart points inside a block (prefix compression span).
    pub block_restart_interval: usize,
    /// Bloom filter bits per key (0 disables filters).
    pub bloom_bits_per_key: usize,
    /// Block cache budget in bytes (0 disables the cache).
    pub block_cache_bytes: usize,
    /// Target size of one SST file written by compaction.
    pub target_file_bytes: u64,
    /// Target size of the base level (dynamic level targets grow down from the last level).
    pub level_base_bytes: u64,
    /// Size ratio between adjacent levels.
    pub level_multiplier: u64,
    /// Number of levels, L0 included.
    pub num_levels: usize,
    /// L0 file count that triggers a compaction.
    pub l0_compaction_trigger: usize,
    /// L0 file count at which writes are slowed down.
    pub l0_slowdown_trigger: usize,
    /// L0 file count at which writes stop until compaction catches up.
    pub l0_stop_trigger: usize,
    /// Compression for each level; levels past the end use the last entry.
    pub compression_per_level: Vec<Compression>,
    /// Background compaction threads.
    pub compaction_threads: usize,
    /// Nice value of the flush, compaction and value-log GC threads, set by each when it
    /// starts (`setpriority` on the thread; they also take the lowest best-effort IO
    /// priority, see [`crate::priority::lower_current_thread`]), so that an owner's
    /// foreground threads come first. Never raises a thread's priority. The log-sync
    /// thread keeps the opener's priority: `Relaxed` writers can wait for it. `None`
    /// (default): every thread runs at the priority of the thread that opened the database.
    pub background_nice: Option<i32>,
    /// Manifest size after which it is rewritten as a snapshot.
    pub manifest_rewrite_bytes: u64,
    /// Largest accepted user key.
    pub max_key_bytes: usize,
    /// Largest accepted value.
    pub max_value_bytes: usize,
    /// Largest accepted encoded write batch.
    pub max_batch_bytes: usize,
    /// IO backend used when `fs` is not set.
    pub io_backend: IoBackend,
    /// Filesystem override (fault injection in tests).
    pub fs: Option<Arc<dyn FileSystem>>,
    /// Receives opaque WAL records during recovery, oldest first.
    pub opaque_replay: Option<OpaqueReplay>,
    /// Wall clock used for TTLs (expiry is decided against it at read and compaction time).
    pub clock: Arc<dyn Clock>,
    /// Keep every version newer than the GC safe point, which starts at 0 and is advanced
    /// with `Db::set_gc_safe_point` (MVCC users: transactions, replicas). When false, the
    /// safe point is the newest possible version: older versions are reclaimed as soon as
    /// no snapshot needs them, and reads with a `read_ts` are refused.
    pub retain_versions: bool,
    /// Values of at least this many bytes are moved to the value log (at commit, see
    /// `vlog_on_write`, else when they leave the memtable or pass through compaction); the
    /// table keeps a 20-byte pointer. 0 or `usize::MAX` disables key-value separation.
    pub value_threshold_bytes: usize,
    /// Per-column-family overrides of `value_threshold_bytes`, keyed by the column family
    /// byte of the logical key (same meaning of 0 and `usize::MAX`).
    pub value_threshold_per_cf: BTreeMap<u8, usize>,
    /// Size at which a value-log segment is finished and the next one started.
    pub vlog_segment_bytes: u64,
    /// Separate large values at commit (WiscKey's write path): the commit leader appends
    /// them to the value log before the WAL record, which carries only their pointers, so
    /// each value is written once. When false they are separated at flush (written to the
    /// WAL and again to the value log). Values applied without the WAL
    /// (`Db::apply_unlogged`) are separated at flush either way.
    pub vlog_on_write: bool,
    /// Value-log GC collects a segment once at least this fraction of its bytes is garbage
    /// (in (0, 1]).
    pub vlog_gc_min_discard_ratio: f64,
    /// Background value-log GC runs only while the value log's records take more than this
    /// many bytes per byte not known to be garbage (>= 1.0). Collecting later means fewer
    /// live values are copied (they had more time to become garbage); 1.0 collects every
    /// segment as soon as it reaches `vlog_gc_min_discard_ratio`.
    pub vlog_gc_space_amp: f64,
    /// Segment bytes one value-log GC round reads at most; a larger segment is collected
    /// over several rounds, its liveness re-checked against a fresh view in each.
    pub vlog_gc_bytes_per_round: u64,
    /// TEST ONLY: finish value-log segments without fdatasync. Exists so crash tests can
    /// prove they detect lost values. Never set this in production.
    #[doc(hidden)]
    pub unsafe_vlog_skip_segment_sync: bool,
    /// TEST ONLY: the write path does not fdatasync the value log before the WAL (a
    /// finished segment is still synced), so acknowledged WAL records can point at values
    /// a power loss takes away. Exists so crash tests can prove they detect that. Never set
    /// this in production.
    #[doc(hidden)]
    pub unsafe_vlog_skip_write_sync: bool,
    /// TEST ONLY: value-log GC deletes the collected segment before the manifest edit that
    /// re-points its live values is durable. Exists for crash tests' negative controls.
    #[doc(hidden)]
    pub unsafe_vlog_delete_before_commit: bool,
    /// TEST ONLY: acknowledge `Sync` writes without fdatasync. Exists so crash
    /// tests can prove they detect lost writes. Never set this in production.
    #[doc(hidden)]
    pub unsafe_ack_before_sync: bool,
    /// TEST ONLY: skip making ingested tables durable before the manifest names them.
    /// Exists so crash tests can prove they detect it. Never set this in production.
    #[doc(hidden)]
    pub unsafe_ingest_skip_sync: bool,
    /// TEST ONLY: the flush thread starts no flush while this returns true (called from
    /// the flush thread with the engine's state lock held), so tests can hold frozen
    /// memtables back and drive writes into a stop deterministically.
    #[doc(hidden)]
    pub test_hold_flush: Option<FlushHold>,
    /// TEST ONLY: the transaction GC lets any write record (lock-only and rollback records
    /// too) hide the older ones, as a plain version GC would. Exists so tests can prove
    /// they catch the committed values it loses. Never set this in production.
    #[doc(hidden)]
    pub unsafe_txn_gc_any_record_shadows: bool,
    /// TEST ONLY: the transaction GC drops long values below its safe point whether or
    /// not a lock or put record still refers to them. Exists so tests can prove they catch
    /// the values it loses. Never set this in production.
    #[doc(hidden)]
    pub unsafe_txn_gc_drop_referenced_values: bool,
    /// Key spaces (at most 64) for which [`crate::Db::may_hold`] can answer "empty": an
    /// owner that looks up a usually empty space on every request (the Redis gateway's
    /// lock records) skips the lookups until a record appears.
    pub tracked_spaces: Vec<crate::KeySpace>,
}

/// See `Options::test_hold_flush`.
pub type FlushHold = Arc<dyn Fn() -> bool + Send + Sync>;

impl Default for Options {
    fn default() -> Self {
        Options {
            create_if_missing: true,
            error_if_exists: false,
            durability: Durability::Sync,
            relaxed_sync_interval_bytes: 4 << 20,
            write_buffer_bytes: 64 << 20,
            max_immutable_memtables: 2,
            wal_segment_bytes: 64 << 20,
            wal_recycle_segments: 4,
            block_bytes: 4096,
            block_restart_interval: 16,
            bloom_bits_per_key: 10,
            block_cache_bytes: 64 << 20,
            target_file_bytes: 64 << 20,
            level_base_bytes: 256 << 20,
            level_multiplier: 10,
            num_levels: 7,
            l0_compaction_trigger: 4,
            l0_slowdown_trigger: 20,
            l0_stop_trigger: 36,
            compression_per_level: vec![Compression::None],
            compaction_threads: 1,
            background_nice: None,
            manifest_rewrite_bytes: 8 << 20,
            max_key_bytes: 64 << 10,
            max_value_bytes: 16 << 20,
            max_batch_bytes: 32 << 20,
            io_backend: IoBackend::Std,
            fs: None,
            opaque_replay: None,
            clock: Arc::new(SystemClock),
            retain_versions: false,
            value_threshold_bytes: crate::vlog::DEFAULT_VALUE_THRESHOLD,
            value_threshold_per_cf: BTreeMap::new(),
            vlog_segment_bytes: crate::vlog::segment::DEFAULT_TARGET_SEGMENT_BYTES,
            vlog_on_write: true,
            vlog_gc_min_discard_ratio: 0.5,
            vlog_gc_space_amp: 1.5,
            vlog_gc_bytes_per_round: 8 << 20,
            unsafe_vlog_skip_segment_sync: false,
            unsafe_vlog_skip_write_sync: false,
            unsafe_vlog_delete_before_commit: false,
            unsafe_ack_before_sync: false,
            unsafe_ingest_skip_sync: false,
            test_hold_flush: None,
            unsafe_txn_gc_any_record_shadows: false,
            unsafe_txn_gc_drop_referenced_values: false,
            tracked_spaces: Vec::new(),
        }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("durability", &self.durability)
            .field("write_buffer_bytes", &self.write_buffer_bytes)
            .field("wal_segment_bytes", &self.wal_segment_bytes)
            .field("block_bytes", &self.block_bytes)
            .field("bloom_bits_per_key", &self.bloom_bits_per_key)
            .field("block_cache_bytes", &self.block_cache_bytes)
            .field("target_file_bytes", &self.target_file_bytes)
            .field("level_base_bytes", &self.level_base_bytes)
            .field("l0_compaction_trigger", &self.l0_compaction_trigger)
            .field("compression_per_level", &self.compression_per_level)
            .field("io_backend", &self.io_backend)
            .field("background_nice", &self.background_nice)
            .field("value_threshold_bytes", &self.value_threshold_bytes)
            .field("value_threshold_per_cf", &self.value_threshold_per_cf)
            .field("vlog_segment_bytes", &self.vlog_segment_bytes)
            .field("vlog_on_write", &self.vlog_on_write)
            .field("vlog_gc_min_discard_ratio", &self.vlog_gc_min_discard_ratio)
            .field("vlog_gc_space_amp", &self.vlog_gc_space_amp)
            .field("vlog_gc_bytes_per_round", &self.vlog_gc_bytes_per_round)
            .finish_non_exhaustive()
    }
}

impl Options {
    /// The value-log threshold of column family `cf`, or `None` when its values stay in tables.
    pub fn value_threshold_for(&self, cf: u8) -> Option<usize> {
        let t = self
            .value_threshold_per_cf
            .get(&cf)
            .copied()
            .unwrap_or(self.value_threshold_bytes);
        (t != 0 && t != usize::MAX).then_some(t)
    }

    /// True when some column family separates values into the value log.
    pub fn value_log_enabled(&self) -> bool {
        let on = |t: usize| t != 0 && t != usize::MAX;
        on(self.value_threshold_bytes) || self.value_threshold_per_cf.values().any(|t| on(*t))
    }
}

/// Per-write options.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOptions {
    /// Overrides the database's default durability for this write.
    pub durability: Option<Durability>,
}

/// Options for reads and iterators.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Inclusive lower bound on user keys.
    pub lower_bound: Option<Vec<u8>>,
    /// Exclusive upper bound on user keys.
    pub upper_bound: Option<Vec<u8>>,
    /// Only keys starting with this prefix.
    pub prefix: Option<Vec<u8>>,
    /// Skip adding blocks read by this operation to the block cache.
    pub skip_cache_fill: bool,
    /// Read the newest version at or below this timestamp (`None`: the newest of all).
    /// Must not be below the GC safe point (see `Db::set_gc_safe_point`).
    pub read_ts: Option<u64>,
    /// Read as of this snapshot (`None`: as of now).
    pub snapshot: Option<crate::Snapshot>,
    /// Which storage tiers the read may touch (see [`ReadTier`]).
    pub tier: ReadTier,
}

/// Which storage tiers a read may touch (RocksDB's `ReadTier`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadTier {
    /// Memtables, the block cache and the disk.
    #[default]
    All,
    /// Memtables and the block cache only. A read that would need disk IO (a data block
    /// missing from the block cache, or a value in the value log) fails with
    /// [`crate::Error::WouldBlock`] having done no IO; an iterator stops and reports it
    /// in `status()`. For callers on threads that must not block (an async executor),
    /// which then run the read again on a thread that may.
    CacheOnly,
}

/// How a table read uses the block cache (derived from [`ReadOptions`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockRead {
    /// Read missing blocks from disk and add them to the cache.
    Fill,
    /// Read missing blocks from disk without adding them (scans, compaction).
    NoFill,
    /// Never read from disk: a missing block is [`crate::Error::WouldBlock`].
    CacheOnly,
}

impl BlockRead {
    /// The block read mode of a user read.
    pub fn of(ro: &ReadOptions) -> BlockRead {
        match (ro.tier, ro.skip_cache_fill) {
            (ReadTier::CacheOnly, _) => BlockRead::CacheOnly,
            (ReadTier::All, false) => BlockRead::Fill,
            (ReadTier::All, true) => BlockRead::NoFill,
        }
    }
}

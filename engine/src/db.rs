//! The database handle: open/recovery, the group-commit write path, reads, and background work.

mod log_sync;
mod vlog_gc;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};

use crate::batch::{decode_batch, BatchOp, WriteBatch, MAX_RANGE_DELETES_PER_BATCH};
use crate::cache::BlockCache;
use crate::compaction::{self, FullStep, JobSettings, MergeJob, Plan, Step};
use crate::db_iter::DbIterator;
use crate::error::{Error, IoContext, Result};
use crate::filename::{self, FileKind};
use crate::fs::{DirLock, FileSystem, OpenMode, StdFs, UringFs};
use crate::iter::InternalIterator;
use crate::key::{
    expiry_of, has_expiry, lookup_key, resolve, KeySpace, Kind, Resolved, MAX_VERSION, PREFIX_LEN,
};
use crate::manifest::{self, ManifestState, ManifestWriter};
use crate::memtable::{Found, Memtable};
use crate::merge::{level_may_overlap, LevelIterator, MergingIterator};
use crate::options::{
    BlockRead, Durability, IoBackend, Options, ReadOptions, ReadTier, WriteOptions,
};
use crate::range_del::{FragmentedTombstones, GcPolicy, RangeDelCursor};
use crate::region_snapshot::{self, ExportOptions, IngestReport, RegionRange, SnapshotManifest};
use crate::snapshot::{Snapshot, SnapshotList};
use crate::sst::{Table, TableBuilderOptions};
use crate::stats::{Counters, LevelStats, Stats};
use crate::version::{FileDesc, FileMeta, Version, VersionEdit};
use crate::vlog::{
    MemtableValues, ReaderCache, RecoveredSegments, Recycler, SegmentMeta, SegmentSet,
    SegmentWriterOptions, Thresholds, ValueFetcher, WriteLog, WriteLogSettings,
};
use crate::wal::{self, Replayed, Wal, WalPosition, REC_BATCH, REC_OPAQUE};
use log_sync::{LogSyncer, SyncFile};
use std::collections::HashSet;
use vlog_gc::VlogState;

/// Bytes of batches one group commit gathers at most (beyond the first batch).
const GROUP_BYTES_MAX: usize = 1 << 20;
/// Fewest entries of a write group that go into the memtable as one sorted batch.
const ADD_MANY_MIN_ENTRIES: usize = 16;
/// Flushes an ingest tries before giving up on writes racing into its range.
const INGEST_FLUSH_ATTEMPTS: usize = 4;
/// Longest a relaxed writer waits for a running background log sync before syncing itself.
const RELAXED_SYNC_WAIT: Duration = Duration::from_secs(1);
/// Collected value-log segment files kept for the write path to reuse.
const RECYCLED_SEGMENTS: usize = 2;
/// Entries a background job merges between checks for shutdown.
const STEP_ENTRIES: usize = 4096;

/// A value read with its metadata (see [`Db::get_entry`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The stored value.
    pub value: Vec<u8>,
    /// The version it was written at.
    pub version: u64,
    /// When it expires (unix ms), if it was written with a TTL.
    pub expiry_unix_ms: Option<u64>,
}

/// How far the engine holds writes back right now (see [`Db::write_stall`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStall {
    /// Writes go through.
    None,
    /// L0 is at `l0_slowdown_trigger`: each write group is delayed by 1 ms.
    Slowdown,
    /// Writes wait: L0 is at `l0_stop_trigger` (until it is a margin below it), or the
    /// active memtable is full while `max_immutable_memtables` frozen ones wait for flush.
    Stop,
}

/// An open database. Cheap to clone; all clones share one engine.
#[derive(Clone)]
pub struct Db {
    handle: Arc<Handle>,
}

/// Closes the engine when the last user handle goes away.
struct Handle {
    inner: Arc<Inner>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Err(e) = self.inner.shutdown() {
            tracing::warn!(error = %e, "error while closing the database");
        }
    }
}

/// What a reader needs: the memtables and the file set, swapped as one.
struct SuperVersion {
    mem: Arc<Memtable>,
    /// Frozen memtables, newest first.
    imms: Vec<Arc<Memtable>>,
    version: Arc<Version>,
    /// Some table of `version` holds range tombstones (readers consult tables' tombstones only then).
    table_range_dels: bool,
    /// The live value-log segments (kept alive while this super version is in use).
    vlog: Arc<SegmentSet>,
}

/// True when some table of `v` holds range tombstones.
fn has_table_range_dels(v: &Version) -> bool {
    v.levels
        .iter()
        .flatten()
        .any(|f| f.table.range_tombstones().is_some())
}

/// A frozen memtable waiting for flush.
struct Immutable {
    mem: Arc<Memtable>,
    /// First WAL segment of the memtable that replaced it: the log floor once it is flushed.
    next_gen: u64,
    /// Highest sequence number it holds.
    last_seq: u64,
    /// Raft applied index per region recorded with its data.
    applied: BTreeMap<u64, u64>,
    /// Ordinal of this memtable among all frozen ones.
    ordinal: u64,
    /// Its entries whose values the write path put in the value log, and those segments.
    values: Arc<MemtableValues>,
}

/// State owned by the commit leader (whoever holds the lock).
struct WriteState {
    wal: Wal,
    /// Where large values of logged writes go at commit (`None`: at flush, or nowhere).
    vlog: Option<WriteLog>,
    mem: Arc<Memtable>,
    applied: BTreeMap<u64, u64>,
    last_seq: u64,
    scratch: Vec<u8>,
    /// Bytes written to the logs (WAL and write-path value log) since open.
    logged: u64,
    /// `logged` as of the last inline sync of both logs.
    synced_mark: u64,
}

impl WriteState {
    /// The files a background sync of everything logged so far must fdatasync, value log
    /// first.
    fn sync_files(&self) -> Vec<SyncFile> {
        let mut files = Vec::with_capacity(2);
        if let Some((file, path)) = self.vlog.as_ref().and_then(|v| v.current_file()) {
            files.push(SyncFile {
                file,
                path,
                vlog: true,
            });
        }
        let (file, path) = self.wal.active_file();
        files.push(SyncFile {
            file,
            path,
            vlog: false,
        });
        files
    }
}

/// Shared state behind the state lock.
struct State {
    version: Arc<Version>,
    mem: Arc<Memtable>,
    imms: VecDeque<Immutable>,
    frozen_total: u64,
    flushed_total: u64,
    manifest: ManifestWriter,
    manifest_state: ManifestState,
    log_floor: u64,
    flushing: bool,
    compacting: usize,
    /// A step of a full compaction runs: it runs alone (its outputs may span gaps between
    /// the output level's files, where another compaction could write), so the
    /// background thread picks nothing meanwhile.
    full_compaction: bool,
    bg_error: Option<String>,
    /// Number of background failures so far (lets a waiter see only new ones).
    bg_errors: u64,
    shutting_down: bool,
    /// Live value-log segments and the GC's coordination with compaction.
    vlog: VlogState,
}

/// One caller's write waiting in the group-commit queue.
struct PendingWrite {
    batch: WriteBatch,
    opaque: Vec<(u8, Vec<u8>)>,
    logged: bool,
    applied: Vec<(u64, u64)>,
    sync: bool,
    /// Set (under the queue lock) once a leader has committed this write.
    done: AtomicBool,
    result: Mutex<Option<Result<WalPosition>>>,
    /// Signalled (with the queue lock) when the write is done or its owner must lead.
    cv: Condvar,
}

struct Inner {
    dir: PathBuf,
    opts: Options,
    fs: Arc<dyn FileSystem>,
    lock: Mutex<Option<Box<dyn DirLock>>>,
    cache: Option<Arc<BlockCache>>,
    snapshots: Arc<SnapshotList>,
    last_seq: AtomicU64,
    /// GC safe point set by the owner (`Options::retain_versions`).
    gc_safe_point: AtomicU64,
    /// Transaction GC safe point set by the owner (`Db::set_txn_safe_point`).
    txn_safe_point: AtomicU64,
    next_file_number: Arc<AtomicU64>,
    pending: Mutex<VecDeque<Arc<PendingWrite>>>,
    write: Mutex<WriteState>,
    state: Mutex<State>,
    state_cv: Condvar,
    sv: RwLock<Arc<SuperVersion>>,
    poisoned: Mutex<Option<String>>,
    is_poisoned: AtomicBool,
    closed: AtomicBool,
    counters: Counters,
    /// User iterators opened, and their count when the last flush was installed: many
    /// since then make L0 compact at its plain trigger ([`compaction::l0_trigger`]).
    iterators_opened: AtomicU64,
    iterators_at_flush: AtomicU64,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Open value-log segment readers, shared by every read.
    readers: Arc<ReaderCache>,
    /// Held while a value-log GC runs: one at a time.
    vlog_gc: Mutex<()>,
    /// L0 files and frozen memtables of the installed super version ([`Db::write_stall`]).
    l0_files: AtomicUsize,
    imm_count: AtomicUsize,
    /// Writes are stopped by L0 pressure; they resume only below the stop trigger minus a margin.
    l0_stopped: AtomicBool,
    /// Syncs the logs in the background for relaxed writes.
    log_syncer: LogSyncer,
    /// Bit i: `Options::tracked_spaces[i]` may hold a record ([`Db::may_hold`]).
    touched: AtomicU64,
}

fn validate_options(o: &Options) -> Result<()> {
    let bad = |m: String| Err(Error::InvalidArgument(m));
    if o.tracked_spaces.len() > 64 {
        return bad(format!(
            "at most 64 tracked_spaces, got {}",
            o.tracked_spaces.len()
        ));
    }
    if o.num_levels < 2 || o.num_levels > 16 {
        return bad(format!(
            "num_levels must be in 2..=16, got {}",
            o.num_levels
        ));
    }
    if o.write_buffer_bytes < 64 << 10 {
        return bad("write_buffer_bytes must be at least 64 KiB".into());
    }
    if o.max_batch_bytes as u64 + 4096 > o.wal_segment_bytes {
        return bad(format!(
            "max_batch_bytes ({}) must be at least 4 KiB below wal_segment_bytes ({})",
            o.max_batch_bytes, o.wal_segment_bytes
        ));
    }
    if o.wal_segment_bytes > 1 << 30 {
        return bad("wal_segment_bytes must be at most 1 GiB".into());
    }
    if o.l0_compaction_trigger == 0
        || o.l0_slowdown_trigger < o.l0_compaction_trigger
        || o.l0_stop_trigger <= o.l0_slowdown_trigger
    {
        return bad(
            "need 0 < l0_compaction_trigger <= l0_slowdown_trigger < l0_stop_trigger".into(),
        );
    }
    if o.max_immutable_memtables == 0 {
        return bad("max_immutable_memtables must be at least 1".into());
    }
    if o.block_bytes < 256 || o.block_restart_interval == 0 {
        return bad("block_bytes must be >= 256 and block_restart_interval >= 1".into());
    }
    // A value-log record (header, internal key, value) must fit its u32 length.
    let record_max = 12 + o.max_key_bytes as u64 + 18 + o.max_value_bytes as u64;
    if o.value_log_enabled() && record_max > u32::MAX as u64 {
        return bad(format!(
            "with the value log on, max_key_bytes + max_value_bytes must stay below 4 GiB \
             (a value-log record of {record_max} bytes)"
        ));
    }
    validate_vlog_options(o)
}

fn validate_vlog_options(o: &Options) -> Result<()> {
    let bad = |m: String| Err(Error::InvalidArgument(m));
    if o.vlog_segment_bytes < 4096 || o.vlog_segment_bytes > 4 << 30 {
        return bad(format!(
            "vlog_segment_bytes must be in 4 KiB..=4 GiB, got {}",
            o.vlog_segment_bytes
        ));
    }
    let r = o.vlog_gc_min_discard_ratio;
    if !(r > 0.0 && r <= 1.0) {
        return bad(format!(
            "vlog_gc_min_discard_ratio must be in (0, 1], got {r}"
        ));
    }
    let a = o.vlog_gc_space_amp;
    if !(a.is_finite() && a >= 1.0) {
        return bad(format!("vlog_gc_space_amp must be at least 1.0, got {a}"));
    }
    if o.vlog_gc_bytes_per_round < 4096 {
        return bad(format!(
            "vlog_gc_bytes_per_round must be at least 4 KiB, got {}",
            o.vlog_gc_bytes_per_round
        ));
    }
    Ok(())
}

impl Db {
    /// Opens (or creates) the database in `path`, recovering from its WAL.
    pub fn open(path: impl AsRef<Path>, opts: Options) -> Result<Db> {
        validate_options(&opts)?;
        let dir = path.as_ref().to_path_buf();
        let fs: Arc<dyn FileSystem> = match (&opts.fs, opts.io_backend) {
            (Some(fs), _) => fs.clone(),
            (None, IoBackend::Std) => Arc::new(StdFs::new()),
            (None, IoBackend::Uring) => Arc::new(UringFs::new().ctx("io_uring setup", &dir)?),
        };
        // Debug builds check that no file operation runs on a thread marked non-blocking.
        #[cfg(debug_assertions)]
        let fs: Arc<dyn FileSystem> = Arc::new(crate::fs::GuardedFs::new(fs));
        if opts.create_if_missing {
            fs.create_dir_all(&dir).ctx("create dir", &dir)?;
        }
        let lock_path = dir.join(filename::LOCK);
        let lock = fs.lock(&lock_path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                Error::Locked { path: dir.clone() }
            } else {
                Error::io("lock", &lock_path, e)
            }
        })?;
        let cache =
            (opts.block_cache_bytes > 0).then(|| Arc::new(BlockCache::new(opts.block_cache_bytes)));
        let inner = recover(dir, opts, fs, lock, cache)?;
        let inner = Arc::new(inner);
        if let Err(e) = inner.start_threads() {
            // Stop whatever did start, then report.
            let _ = inner.shutdown();
            return Err(e);
        }
        let db = Db {
            handle: Arc::new(Handle { inner }),
        };
        db.probe_tracked()?;
        Ok(db)
    }

    /// Whether `space` may hold a record. False only for a space of
    /// `Options::tracked_spaces` that has held none since the database opened: no put into
    /// it, no ingest that brought one, none found at open. One atomic load.
    pub fn may_hold(&self, space: KeySpace) -> bool {
        let inner = self.inner();
        match inner.opts.tracked_spaces.iter().position(|s| *s == space) {
            Some(i) => inner.touched.load(Ordering::SeqCst) & (1 << i) != 0,
            None => true,
        }
    }

    /// Marks the tracked spaces that hold a live record now (a seek each).
    fn probe_tracked(&self) -> Result<()> {
        let inner = self.inner();
        for (i, space) in inner.opts.tracked_spaces.iter().enumerate() {
            if inner.touched.load(Ordering::SeqCst) & (1 << i) != 0 {
                continue;
            }
            let mut it = self.iter_in(*space, ReadOptions::default())?;
            it.seek_to_first();
            if it.valid() {
                inner.touched.fetch_or(1 << i, Ordering::SeqCst);
            }
            it.status()?;
        }
        Ok(())
    }

    fn inner(&self) -> &Inner {
        &self.handle.inner
    }

    /// Stores `value` under `key`.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.put_opt(key, value, &WriteOptions::default())
    }

    /// Stores `value` under `key` with per-write options.
    pub fn put_opt(&self, key: &[u8], value: &[u8], wo: &WriteOptions) -> Result<()> {
        let mut b = WriteBatch::with_capacity(key.len() + value.len());
        b.put(key, value);
        self.write_owned(b, wo)
    }

    /// Stores `value` under `key` until `ttl` from now; the expiry is fixed at write time.
    pub fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: std::time::Duration) -> Result<()> {
        let expiry = self
            .inner()
            .opts
            .clock
            .now_ms()
            .saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        let mut b = WriteBatch::with_capacity(key.len() + value.len() + crate::key::EXPIRY_LEN);
        b.put_with_expiry(key, value, expiry);
        self.write_owned(b, &WriteOptions::default())
    }

    /// Deletes `key` (a no-op if it is absent).
    pub fn delete(&self, key: &[u8]) -> Result<()> {
        let mut b = WriteBatch::new();
        b.delete(key);
        self.write_owned(b, &WriteOptions::default())
    }

    /// Deletes every key in `[start, end)`: all versions written before it, for readers
    /// from now on (see [`WriteBatch::delete_range_in`]).
    pub fn delete_range(&self, start: &[u8], end: &[u8]) -> Result<()> {
        let mut b = WriteBatch::new();
        b.delete_range(start, end);
        self.write_owned(b, &WriteOptions::default())
    }

    /// Applies every write in `batch` atomically.
    pub fn write(&self, batch: &WriteBatch, wo: &WriteOptions) -> Result<()> {
        self.write_owned(batch.clone(), wo)
    }

    fn write_owned(&self, batch: WriteBatch, wo: &WriteOptions) -> Result<()> {
        let sync = wo.durability.unwrap_or(self.inner().opts.durability) == Durability::Sync;
        self.inner()
            .submit(batch, Vec::new(), true, Vec::new(), sync)
            .map(|_| ())
    }

    /// Appends opaque records (e.g. raft entries) to the WAL atomically, to be handed back on recovery.
    ///
    /// Returns the position of the first record. Records are replayed through
    /// `Options::opaque_replay` until released with [`Db::set_opaque_floor`].
    pub fn append_opaque(&self, records: &[(u8, &[u8])], wo: &WriteOptions) -> Result<WalPosition> {
        let total: usize = records.iter().map(|(_, p)| p.len() + 1).sum();
        if total > self.inner().opts.max_batch_bytes {
            return Err(Error::BatchTooLarge {
                len: total,
                max: self.inner().opts.max_batch_bytes,
            });
        }
        let sync = wo.durability.unwrap_or(self.inner().opts.durability) == Durability::Sync;
        let recs = records.iter().map(|(t, p)| (*t, p.to_vec())).collect();
        self.inner()
            .submit(WriteBatch::new(), recs, true, Vec::new(), sync)
    }

    /// Applies `batch` to the memtable without logging it: its durability comes from
    /// a record already in the WAL (e.g. a raft entry). `applied` = (region, index) is
    /// persisted with the flush that makes this data durable (see [`Db::applied_index`]).
    pub fn apply_unlogged(&self, batch: &WriteBatch, applied: Option<(u64, u64)>) -> Result<()> {
        self.apply_unlogged_at(batch, applied.as_slice())
    }

    /// Like [`Db::apply_unlogged`], recording the applied index of several regions with the
    /// same data (they become durable together: a region split records parent and child).
    pub fn apply_unlogged_at(&self, batch: &WriteBatch, applied: &[(u64, u64)]) -> Result<()> {
        self.inner()
            .submit(batch.clone(), Vec::new(), false, applied.to_vec(), false)
            .map(|_| ())
    }

    /// Whether writes are held back right now; a few atomic loads, never blocks. An owner
    /// that must not block (an async executor) can refuse new writes while this is
    /// [`WriteStall::Stop`] instead of queueing them behind the stall. Advisory: the state
    /// can change right after the call.
    pub fn write_stall(&self) -> WriteStall {
        self.inner().write_stall()
    }

    /// Makes every write acknowledged so far durable (fdatasync of the value log, then the
    /// WAL); a no-op when nothing is unsynced. Owners of `Durability::Relaxed` databases
    /// call it on a timer to bound the loss window in time as well as in bytes.
    pub fn sync_logs(&self) -> Result<()> {
        let inner = self.inner();
        inner.check_open()?;
        let mut ws = inner.write.lock();
        inner.check_writable()?;
        inner.sync_logs(&mut ws)
    }

    /// The highest applied index of `region` whose data is durable in SST files.
    pub fn applied_index(&self, region: u64) -> Option<u64> {
        self.inner()
            .state
            .lock()
            .manifest_state
            .applied
            .get(&region)
            .copied()
    }

    /// The oldest WAL segment still live: what replays at the next open when the opaque
    /// floor is set to it. Older segment files may still exist, kept for reuse: a floor
    /// below this one would make their names part of the log again (and a reused one a
    /// gap in it).
    pub fn oldest_live_wal_segment(&self) -> u64 {
        self.inner().write.lock().wal.oldest_live()
    }

    /// Allows WAL segments older than `segment` to be reused once their batches are flushed.
    /// `None` means the owner needs no opaque records.
    pub fn set_opaque_floor(&self, segment: Option<u64>) -> Result<()> {
        let inner = self.inner();
        let mut st = inner.state.lock();
        let edit = VersionEdit {
            opaque_floor: segment,
            ..Default::default()
        };
        inner.log_and_apply(&mut st, edit, &[])?;
        Ok(())
    }

    /// Reads the newest value stored under `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get_in(KeySpace::KV, key, &ReadOptions::default())
    }

    /// Reads the value of `key` at version `ts`: the newest version at or below it.
    pub fn get_at(&self, key: &[u8], ts: u64) -> Result<Option<Vec<u8>>> {
        let ro = ReadOptions {
            read_ts: Some(ts),
            ..Default::default()
        };
        self.get_in(KeySpace::KV, key, &ro)
    }

    /// Reads the value of `key` in `space` at `ro`'s timestamp and snapshot.
    pub fn get_in(&self, space: KeySpace, key: &[u8], ro: &ReadOptions) -> Result<Option<Vec<u8>>> {
        Ok(self.get_entry(space, key, ro)?.map(|e| e.value))
    }

    /// Reads the value of `key` in `space` with its version and expiry.
    pub fn get_entry(
        &self,
        space: KeySpace,
        key: &[u8],
        ro: &ReadOptions,
    ) -> Result<Option<Entry>> {
        let inner = self.inner();
        inner.check_open()?;
        // Pinned before the read point is taken: the segments of any pointer the lookup
        // finds stay readable (a GC that judged a value dead did so for readers at or past
        // a sequence number published before this read's).
        let pinned = inner.value_fetcher();
        let (ts, seq) = inner.read_point(ro)?;
        let logical = space.logical(key);
        let Some(found) = inner.find(&logical, ts, seq, BlockRead::of(ro))? else {
            return Ok(None);
        };
        let now_ms = inner.opts.clock.now_ms();
        Ok(match resolve(found.kind, &found.value, now_ms) {
            Resolved::Gone => None,
            Resolved::Pointer(_) if ro.tier == ReadTier::CacheOnly => {
                return Err(Error::WouldBlock("a value in the value log"));
            }
            Resolved::Pointer(p) => Some(Entry {
                value: inner.fetch_value(&pinned, p)?,
                version: found.version,
                expiry_unix_ms: has_expiry(found.kind)
                    .then(|| expiry_of(&found.value))
                    .flatten(),
            }),
            Resolved::Value(v) => {
                let skip = found.value.len() - v.len();
                let expiry_unix_ms =
                    (found.kind == Kind::PutWithExpiry as u8).then(|| expiry_of(&found.value));
                let mut value = found.value;
                value.drain(..skip);
                Some(Entry {
                    value,
                    version: found.version,
                    expiry_unix_ms: expiry_unix_ms.flatten(),
                })
            }
        })
    }

    /// Stores `value` under `key` at an explicit `version` (>= 1).
    ///
    /// Per key, write versions in increasing order: a write below the version of an
    /// existing delete of the key may show through once that delete falls below the GC
    /// safe point and is reclaimed.
    pub fn put_at(&self, key: &[u8], version: u64, value: &[u8]) -> Result<()> {
        let mut b = WriteBatch::new();
        b.put_at(KeySpace::KV, key, version, value);
        self.write_owned(b, &WriteOptions::default())
    }

    /// Deletes `key` at an explicit `version` (>= 1): reads at or after it see no value.
    pub fn delete_at(&self, key: &[u8], version: u64) -> Result<()> {
        let mut b = WriteBatch::new();
        b.delete_at(KeySpace::KV, key, version);
        self.write_owned(b, &WriteOptions::default())
    }

    /// A consistent point-in-time view: reads through it (`ReadOptions::snapshot`) see
    /// exactly the writes acknowledged before it was taken, and compaction keeps what it
    /// needs while it lives.
    pub fn snapshot(&self) -> Snapshot {
        let inner = self.inner();
        let seq = inner.last_seq.load(Ordering::Acquire);
        Snapshot {
            guard: Arc::new(inner.snapshots.acquire(seq)),
        }
    }

    /// Raises the GC safe point to `ts` (never lowers it): compaction may then drop every
    /// version older than the newest one at or below `ts`, and reads below `ts` are refused.
    /// Only meaningful with `Options::retain_versions`. The value is not persisted, except
    /// that a value-log GC records the safe point it relied on: on open the safe point
    /// starts there (or at 0, which reclaims nothing until the owner sets it again).
    pub fn set_gc_safe_point(&self, ts: u64) {
        self.inner().gc_safe_point.fetch_max(ts, Ordering::AcqRel);
    }

    /// The current GC safe point (see [`Db::set_gc_safe_point`]).
    pub fn gc_safe_point(&self) -> u64 {
        self.inner().safe_point()
    }

    /// Raises the transaction GC safe point to `ts` (never lowers it): compaction may then
    /// drop `NS_KV`'s Percolator write records that no transaction reading at or above
    /// `ts` can see (docs/transactions.md, "Garbage collection"). The transaction layer
    /// must refuse reads and prewrites below it. Persisted by the compactions that use it.
    pub fn set_txn_safe_point(&self, ts: u64) {
        self.inner().txn_safe_point.fetch_max(ts, Ordering::AcqRel);
    }

    /// The transaction GC safe point (see [`Db::set_txn_safe_point`]; 0: none yet).
    pub fn txn_safe_point(&self) -> u64 {
        self.inner().txn_safe_point.load(Ordering::Acquire)
    }

    /// An iterator over the ordered-KV namespace's default column family.
    pub fn iter(&self, ro: ReadOptions) -> Result<DbIterator> {
        self.iter_in(KeySpace::KV, ro)
    }

    /// Approximate bytes the SST files hold for user keys `[start, end)` of `space` (`end`
    /// None: to the end of the space), from the tables' indexes: no data block is read.
    /// Memtables and value-log values are not counted. For split decisions and reports.
    pub fn approximate_size(&self, space: KeySpace, start: &[u8], end: Option<&[u8]>) -> u64 {
        let inner = self.inner();
        let sv = inner.sv.read().clone();
        let lo = space.logical(start);
        let hi = match end {
            Some(e) => space.logical(e),
            None => space.end(),
        };
        if lo >= hi {
            return 0;
        }
        sv.version
            .levels
            .iter()
            .flatten()
            .filter(|f| f.desc.smallest_logical() < &hi[..] && f.desc.largest_logical() >= &lo[..])
            .map(|f| {
                let from = f.table.approximate_offset(&crate::key::first_key(&lo));
                let to = f.table.approximate_offset(&crate::key::first_key(&hi));
                to.saturating_sub(from)
            })
            .sum()
    }

    /// An iterator over `space` at `ro`'s timestamp and snapshot.
    pub fn iter_in(&self, space: KeySpace, ro: ReadOptions) -> Result<DbIterator> {
        let inner = self.inner();
        inner.check_open()?;
        inner.iterators_opened.fetch_add(1, Ordering::Relaxed);
        // The super version before the read point: whatever compaction or value-log GC
        // removed from it was invisible at every sequence published before this read's.
        let sv = inner.sv.read().clone();
        let (ts, seq) = inner.read_point(&ro)?;
        let guard = inner.snapshots.acquire(seq);
        let (lo, hi) = (space.prefix().to_vec(), space.end());
        let merged = merged_iter(&sv, &lo, &hi, BlockRead::of(&ro));
        let range_dels = read_view_range_dels(&sv, &lo, &hi);
        Ok(
            DbIterator::new(merged, space, &ro, ts, guard, inner.opts.clock.now_ms())
                .with_range_tombstones(range_dels)
                .with_value_log(ValueFetcher::new(sv.vlog.clone(), inner.readers.clone())),
        )
    }

    /// Writes the entries of `range` (every column family) into `dir` as SST files plus a
    /// checksummed `SNAPSHOT` manifest, as of now (or of `ExportOptions::snapshot`): every
    /// version, or with `ExportOptions::read_ts` the newest live value at or below it. `dir` must not hold
    /// a snapshot already. Value-log values are written inline.
    pub fn export_range(
        &self,
        range: &RegionRange,
        dir: &Path,
        opts: &ExportOptions,
    ) -> Result<SnapshotManifest> {
        let inner = self.inner();
        inner.check_open()?;
        let ro = ReadOptions {
            read_ts: opts.read_ts,
            snapshot: opts.snapshot.clone(),
            ..Default::default()
        };
        // The super version before the read point (see `iter_in`); its segments stay alive.
        let sv = inner.sv.read().clone();
        let (_, seq) = inner.read_point(&ro)?;
        // Pinned while the export runs, so compaction keeps every entry it reads.
        let _guard = inner.snapshots.acquire(seq);
        let (lo, hi) = ([range.ns], [range.ns.wrapping_add(1)]);
        let fetcher = ValueFetcher::new(sv.vlog.clone(), inner.readers.clone());
        let src = region_snapshot::ExportSource {
            iter: merged_iter(&sv, &lo, &hi, BlockRead::NoFill),
            seq,
            now_ms: inner.opts.clock.now_ms(),
            inline: Box::new(move |kind, value| fetcher.inline(kind, value)),
            range_dels: read_view_range_dels(&sv, &lo, &hi)
                .map(|t| RangeDelCursor::new(t, MAX_VERSION, seq)),
            txn_safe_point: inner.txn_safe_point.load(Ordering::Acquire),
        };
        let last_level = inner.opts.num_levels - 1;
        region_snapshot::export(
            &inner.fs,
            src,
            range,
            dir,
            opts,
            TableBuilderOptions::from_options(&inner.opts, last_level),
        )
    }

    /// Adds the tables of a region snapshot made by [`Db::export_range`], all or nothing.
    ///
    /// Checks the manifest checksum and format, every table's size, crc and blocks, and
    /// that every key lies in the snapshot's range and in `expected` (when given); any
    /// failure changes nothing. Memtables are flushed first; the tables are hard-linked
    /// when `dir` is on the same filesystem (else copied), placed at the deepest level
    /// nothing above overlaps, and become visible at once with one new sequence number,
    /// newer than everything already stored (range deletes included). To replace a range,
    /// `delete_range` it first.
    pub fn ingest(&self, dir: &Path, expected: Option<&RegionRange>) -> Result<IngestReport> {
        let inner = self.inner();
        inner.check_writable()?;
        let (manifest, tables) = region_snapshot::verify(&inner.fs, dir, expected)?;
        drop(tables);
        if manifest.files.is_empty() {
            return Ok(IngestReport {
                global_seq: inner.last_seq.load(Ordering::Acquire),
                placed: Vec::new(),
                bytes: 0,
                entries: 0,
                linked: false,
            });
        }
        crate::crash_point!("ingest::before");
        // Data already in memtables in the range must sit below the ingested tables.
        for _ in 0..INGEST_FLUSH_ATTEMPTS {
            if !inner.memtables_hold(&manifest.range) {
                if let Some(report) = inner.ingest_verified(dir, &manifest)? {
                    crate::crash_point!("ingest::after");
                    self.probe_tracked()?;
                    return Ok(report);
                }
            }
            self.flush()?;
        }
        Err(Error::Busy(format!(
            "writes into the ingested range kept arriving through {INGEST_FLUSH_ATTEMPTS} flushes"
        )))
    }

    /// Freezes the active memtable and waits until every frozen memtable is in an SST file.
    pub fn flush(&self) -> Result<()> {
        let inner = self.inner();
        inner.check_open()?;
        let target = {
            let mut ws = inner.write.lock();
            inner.check_writable()?;
            if !ws.mem.is_empty() {
                inner.switch_memtable(&mut ws)?;
            }
            inner.state.lock().frozen_total
        };
        let mut st = inner.state.lock();
        let errors_before = st.bg_errors;
        loop {
            if st.flushed_total >= target {
                return Ok(());
            }
            // Background work stops on a poisoned database: report that instead of waiting.
            inner.check_writable()?;
            if st.bg_errors > errors_before {
                let e = st.bg_error.clone().unwrap_or_default();
                return Err(Error::Background(format!("flush failed: {e}")));
            }
            if st.shutting_down {
                return Err(Error::Closed);
            }
            inner.state_cv.wait_for(&mut st, Duration::from_millis(100));
        }
    }

    /// Blocks until no flush or compaction is pending or running.
    pub fn wait_for_compaction(&self) -> Result<()> {
        let inner = self.inner();
        let mut st = inner.state.lock();
        let errors_before = st.bg_errors;
        loop {
            if st.bg_errors > errors_before {
                let e = st.bg_error.clone().unwrap_or_default();
                return Err(Error::Background(format!("compaction failed: {e}")));
            }
            inner.check_writable()?;
            if st.shutting_down {
                return Err(Error::Closed);
            }
            let idle = st.imms.is_empty()
                && !st.flushing
                && st.compacting == 0
                && inner.pick_compaction(&st.version).is_none();
            if idle {
                return Ok(());
            }
            inner.state_cv.wait_for(&mut st, Duration::from_millis(100));
        }
    }

    /// Flushes, then compacts until every level is within its target.
    pub fn compact_all(&self) -> Result<()> {
        self.flush()?;
        self.wait_for_compaction()
    }

    /// Flushes, then compacts every level into the last one and rewrites the last: every
    /// entry passes through a bottommost merge, so whatever no reader can see any more
    /// (overwritten, deleted or expired data, versions below the GC safe points) is
    /// dropped. Blocks until done (heavy IO for a large database); writes and background
    /// compactions go on meanwhile.
    pub fn compact_full(&self) -> Result<()> {
        self.compact_all()?;
        self.inner().run_full_compaction()
    }

    /// Collects the value-log segment with the most garbage if its discard ratio is at least
    /// `min_discard_ratio` (in (0, 1]; the background GC uses
    /// `Options::vlog_gc_min_discard_ratio` on its own). Returns whether a segment was
    /// collected; a segment whose values cannot be moved yet (see `docs/architecture.md`,
    /// "Value log") is left for later.
    pub fn run_value_log_gc(&self, min_discard_ratio: f64) -> Result<bool> {
        let inner = self.inner();
        inner.check_writable()?;
        if !(min_discard_ratio > 0.0 && min_discard_ratio <= 1.0) {
            return Err(Error::InvalidArgument(format!(
                "min_discard_ratio must be in (0, 1], got {min_discard_ratio}"
            )));
        }
        inner.run_vlog_gc(min_discard_ratio)
    }

    /// A snapshot of the engine's statistics.
    pub fn stats(&self) -> Stats {
        self.inner().stats()
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.inner().dir
    }

    /// Syncs the WAL, stops background work and releases the directory lock.
    pub fn close(self) -> Result<()> {
        self.handle.inner.shutdown()
    }
}

/// The range tombstones of a compaction's input tables (except `skip`) as one index;
/// `None` when there are none.
fn input_range_dels(plan: &Plan, skip: &HashSet<u64>) -> Option<Arc<FragmentedTombstones>> {
    let parts: Vec<&Arc<FragmentedTombstones>> = plan
        .all_inputs()
        .filter(|f| !skip.contains(&f.desc.number))
        .filter_map(|f| f.table.range_tombstones())
        .collect();
    match parts.as_slice() {
        [] => None,
        [one] => Some(Arc::clone(one)),
        many => Some(Arc::new(FragmentedTombstones::union_clipped(
            many.iter().map(|p| &***p),
            None,
            None,
        ))),
    }
}

/// The input files of `plan` that the inputs' range tombstones delete whole
/// ([`compaction::deleted_whole`]): the compaction deletes them without reading them.
fn dropped_unread(plan: &Plan, policy: &GcPolicy) -> HashSet<u64> {
    let Some(index) = input_range_dels(plan, &HashSet::new()) else {
        return HashSet::new();
    };
    plan.all_inputs()
        .filter(|f| compaction::deleted_whole(f, &index, policy))
        .map(|f| f.desc.number)
        .collect()
}

/// The range tombstones of every memtable and table of `sv` that may hold keys in
/// `[lo, hi)`, as one index restricted to that range; `None` when there are none.
/// A cursor merging every memtable and table of `sv` that may hold logical keys in `[lo, hi)`.
fn merged_iter(
    sv: &SuperVersion,
    lo: &[u8],
    hi: &[u8],
    mode: BlockRead,
) -> Box<dyn InternalIterator> {
    let mut children: Vec<Box<dyn InternalIterator>> = Vec::new();
    children.push(Box::new(sv.mem.iter()));
    for m in &sv.imms {
        children.push(Box::new(m.iter()));
    }
    for f in &sv.version.levels[0] {
        if f.desc.smallest_logical() < hi && f.desc.largest_logical() >= lo {
            children.push(Box::new(f.table.iter(mode)));
        }
    }
    for files in sv.version.levels.iter().skip(1) {
        if level_may_overlap(files, Some(lo), Some(hi)) {
            children.push(Box::new(LevelIterator::new(files.clone(), mode)));
        }
    }
    Box::new(MergingIterator::new(children))
}

fn read_view_range_dels(
    sv: &SuperVersion,
    lo: &[u8],
    hi: &[u8],
) -> Option<Arc<FragmentedTombstones>> {
    let mut parts: Vec<Arc<FragmentedTombstones>> = std::iter::once(&sv.mem)
        .chain(sv.imms.iter())
        .filter_map(|m| m.range_tombstones())
        .collect();
    if sv.table_range_dels {
        let in_range =
            |f: &&Arc<FileMeta>| f.desc.smallest_logical() < hi && f.desc.largest_logical() >= lo;
        for f in sv.version.levels.iter().flatten().filter(in_range) {
            if let Some(t) = f.table.range_tombstones() {
                parts.push(t.clone());
            }
        }
    }
    if parts.is_empty() {
        return None;
    }
    let index = FragmentedTombstones::union_clipped(parts.iter().map(|p| &**p), Some(lo), Some(hi));
    (!index.is_empty()).then(|| Arc::new(index))
}

/// The newest entry of `logical` visible at (`ts`, `seq`) in any memtable or table of `sv`.
///
/// Every layer may hold a higher version than the layers above it (explicit versions
/// arrive in any order), so a layer is skipped only when its highest version cannot beat
/// what was found; with engine-assigned versions that prunes every layer below the first hit.
fn find_in(
    sv: &SuperVersion,
    logical: &[u8],
    ts: u64,
    seq: u64,
    mode: BlockRead,
) -> Result<Option<Found>> {
    // Entries below the newest range tombstone covering the key are gone for this reader.
    let min_seq = range_del_floor(sv, logical, seq);
    let mut best: Option<Found> = None;
    let beats = |best: &Option<Found>, max_version: u64| match best {
        None => true,
        Some(b) => max_version > b.version,
    };
    let offer = |best: &mut Option<Found>, f: Found| {
        if best.as_ref().is_none_or(|b| f.newer_than(b)) {
            *best = Some(f);
        }
    };
    for m in std::iter::once(&sv.mem).chain(sv.imms.iter()) {
        if beats(&best, m.max_version()) {
            if let Some(f) = m.get_from(logical, ts, seq, min_seq) {
                offer(&mut best, f);
            }
        }
    }
    let lookup = lookup_key(logical, ts, seq);
    for f in sv.version.files_for_key(logical) {
        if beats(&best, f.table.properties().max_version) {
            if let Some((ikey, value)) = f.table.get_from(&lookup, min_seq, mode)? {
                offer(&mut best, Found::from_entry(&ikey, value));
            }
        }
    }
    Ok(best)
}

/// One past the sequence number of the newest range tombstone over `logical` that a reader
/// at sequence `seq` sees, in any memtable or table of `sv` (0 when there is none): the
/// smallest sequence number an entry of `logical` needs to be seen.
///
/// Every layer is asked, whatever the point lookups find, and a table before its bloom
/// filter. Without range deletes this is one atomic load per memtable.
fn range_del_floor(sv: &SuperVersion, logical: &[u8], seq: u64) -> u64 {
    let mut newest: Option<u64> = None;
    let mut offer = |index: &FragmentedTombstones| {
        if let Some((_, t)) = index.covering(logical, MAX_VERSION, seq) {
            newest = Some(newest.map_or(t, |n| n.max(t)));
        }
    };
    for m in std::iter::once(&sv.mem).chain(sv.imms.iter()) {
        if let Some(index) = m.range_tombstones() {
            offer(&index);
        }
    }
    if sv.table_range_dels {
        for f in sv.version.files_for_key(logical) {
            if let Some(index) = f.table.range_tombstones() {
                offer(index);
            }
        }
    }
    newest.map_or(0, |t| t.saturating_add(1))
}

/// What a memtable flush produced.
struct Flushed {
    tables: Vec<Arc<FileMeta>>,
    /// Segments the flush edit adds: the flush's own and the memtable's write-path segments.
    segments: Vec<SegmentMeta>,
    /// Record bytes of write-path segments that no output table points at.
    discards: Vec<(u64, u64)>,
}

impl Flushed {
    /// The flush of an empty memtable (its write-path segments, if any, are all garbage).
    fn empty(values: &MemtableValues) -> Flushed {
        Flushed {
            tables: Vec::new(),
            segments: values.segments.clone(),
            discards: values.unreferenced(&BTreeMap::new()),
        }
    }
}

/// The segments a flush adds (its own, then the memtable's write-path segments) and the
/// record bytes of the write-path segments that no output table references (entries the
/// flush dropped: overwritten, deleted, expired).
fn flush_segments(
    out: &compaction::JobOutput,
    values: &MemtableValues,
) -> (Vec<SegmentMeta>, Vec<(u64, u64)>) {
    let mut refs: BTreeMap<u64, u64> = BTreeMap::new();
    for o in &out.tables {
        for (segment, bytes) in &o.table.properties().vlog_refs {
            *refs.entry(*segment).or_insert(0) += bytes;
        }
    }
    let mut segments = out.segments.clone();
    segments.extend_from_slice(&values.segments);
    (segments, values.unreferenced(&refs))
}

/// Opens every table the manifest lists, then replays the WAL into a memtable and flushes it.
fn recover(
    dir: PathBuf,
    opts: Options,
    fs: Arc<dyn FileSystem>,
    lock: Box<dyn DirLock>,
    cache: Option<Arc<BlockCache>>,
) -> Result<Inner> {
    let loaded = manifest::load(&*fs, &dir, opts.num_levels)?;
    let mut state = match loaded {
        Some(_) if opts.error_if_exists => {
            return Err(Error::InvalidArgument(format!(
                "database {} already exists",
                dir.display()
            )))
        }
        Some((s, _)) => s,
        None if !opts.create_if_missing => {
            return Err(Error::InvalidArgument(format!(
                "no database in {} and create_if_missing is off",
                dir.display()
            )))
        }
        None => ManifestState::new(opts.num_levels),
    };
    if state.levels.len() != opts.num_levels {
        return Err(Error::InvalidArgument(format!(
            "database has {} levels but num_levels is {}",
            state.levels.len(),
            opts.num_levels
        )));
    }
    // Open every live table; a missing or damaged one fails the open and nothing is deleted.
    let mut metas: Vec<Arc<FileMeta>> = Vec::new();
    let mut version = Version::new(opts.num_levels);
    for (level, files) in state.levels.iter().enumerate() {
        for desc in files.values() {
            let meta = open_table(&fs, &dir, desc, cache.clone())?;
            version.levels[level].push(meta.clone());
            metas.push(meta);
        }
    }
    let version = version.apply(&VersionEdit::default(), &[]);
    let readers = Arc::new(ReaderCache::new(
        fs.clone(),
        &dir,
        crate::vlog::live::DEFAULT_OPEN_READERS,
    ));
    // Every live segment must be there and whole; a missing or damaged one fails the open.
    vlog_gc::check_segments(&fs, &dir, &state)?;
    let names = fs.list_dir(&dir).ctx("list", &dir)?;
    let max_number = names
        .iter()
        .filter_map(|n| match filename::parse(n) {
            Some(FileKind::Table(x))
            | Some(FileKind::Manifest(x))
            | Some(FileKind::ValueLog(x)) => Some(x),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let next_file_number = Arc::new(AtomicU64::new(state.next_file_number.max(max_number + 1)));

    // Replay the WAL. The memtable takes every range delete the log holds (memtables
    // that were flushed one by one are replayed into one; it is flushed right after).
    let mem = Arc::new(Memtable::with_range_tombstone_limit(
        opts.write_buffer_bytes,
        usize::MAX,
    ));
    // Ingested files may use sequence numbers above what flushes recorded.
    let mut last_seq = state.last_seq.max(state.seq_floor);
    let flushed_seq = state.last_seq;
    let replay_cb = opts.opaque_replay.clone();
    // Values the write path put in the value log are read back from their segments; a
    // batch whose values are not all there whole was never covered by a sync: the log is
    // cut before it.
    let mut recovered = RecoveredSegments::new(fs.clone(), dir.clone());
    let mut resolved: Vec<Option<(Kind, Vec<u8>, crate::vlog::ValuePointer)>> = Vec::new();
    let outcome = wal::replay(
        &*fs,
        &dir,
        state.log_floor,
        state.opaque_floor,
        opts.wal_segment_bytes,
        |rec, path, off| {
            match rec {
                Replayed::Batch(payload) => {
                    let b = decode_batch(payload)
                        .ok_or_else(|| Error::corruption(path, off, "malformed batch record"))?;
                    resolved.clear();
                    for (i, op) in b.ops.iter().enumerate() {
                        let seq = b.seq + i as u64;
                        let r = match op {
                            BatchOp::Point(e)
                                if seq > flushed_seq
                                    && matches!(
                                        e.kind,
                                        Kind::ValuePointer | Kind::ValuePointerWithExpiry
                                    ) =>
                            {
                                let version = e.version.unwrap_or(seq);
                                let got = recovered.resolve(
                                    e.logical_key,
                                    version,
                                    seq,
                                    e.kind,
                                    e.value,
                                )?;
                                if got.is_none() {
                                    return Ok(false);
                                }
                                got
                            }
                            _ => None,
                        };
                        resolved.push(r);
                    }
                    let mut range_dels = Vec::new();
                    for (i, op) in b.ops.iter().enumerate() {
                        let seq = b.seq + i as u64;
                        if seq > flushed_seq {
                            let e = match op {
                                BatchOp::Point(e) => e,
                                BatchOp::RangeDelete(d) => {
                                    range_dels.push(d.tombstone(seq));
                                    last_seq = last_seq.max(seq);
                                    continue;
                                }
                            };
                            let version = e.version.unwrap_or(seq);
                            match resolved[i].take() {
                                Some((kind, value, ptr)) => {
                                    mem.add(version, seq, kind, e.logical_key, &value);
                                    recovered.keep(seq, ptr);
                                }
                                None => mem.add(version, seq, e.kind, e.logical_key, e.value),
                            }
                            last_seq = last_seq.max(seq);
                        }
                    }
                    if !range_dels.is_empty() {
                        mem.add_range_tombstones(range_dels)
                            .map_err(|e| Error::corruption(path, off, e.to_string()))?;
                    }
                }
                Replayed::Opaque(tag, payload) => {
                    if let Some(cb) = &replay_cb {
                        cb(tag, payload);
                    }
                }
            }
            Ok(true)
        },
    )?;
    let values = Arc::new(recovered.finish()?);
    let new_gen = outcome.max_gen.max(state.log_floor).max(1) + 1;
    let mut edit = VersionEdit {
        log_floor: Some(new_gen),
        last_seq: Some(last_seq),
        ..Default::default()
    };
    let mut opened = Vec::new();
    if !mem.is_empty() {
        let settings = JobSettings::new(
            &opts,
            0,
            dir.clone(),
            fs.clone(),
            next_file_number.clone(),
            cache.clone(),
        );
        let safe_point = if opts.retain_versions { 0 } else { MAX_VERSION };
        let mut job = MergeJob::new(Box::new(mem.iter()), settings, last_seq, safe_point, false)
            .with_range_tombstones(mem.range_tombstones(), Vec::new())
            .with_memtable_values(values.clone());
        while job.step(STEP_ENTRIES)? == Step::More {}
        let out = job.finish_all()?;
        let (segments, discards) = flush_segments(&out, &values);
        for o in out.tables {
            let meta = Arc::new(FileMeta::new(o.desc.clone(), o.table, fs.clone(), o.path));
            edit.added.push((0, o.desc));
            opened.push(meta);
        }
        edit.segments_added = segments;
        edit.discards = discards;
    } else {
        let f = Flushed::empty(&values);
        edit.segments_added = f.segments;
        edit.discards = f.discards;
    }
    let manifest_number = next_file_number.fetch_add(1, Ordering::SeqCst);
    edit.next_file_number = Some(next_file_number.load(Ordering::SeqCst));
    state
        .apply(&edit)
        .map_err(|m| Error::corruption(&dir, 0, m))?;
    let version = version.apply(&edit, &opened);
    let manifest =
        ManifestWriter::create(fs.clone(), &dir, manifest_number, &state.snapshot_edit())?;
    manifest.remove_others()?;
    // The replayed data is in an SST now; old segments are needed only for opaque records.
    let keep_from = state.opaque_floor.map_or(new_gen, |o| o.min(new_gen));
    let (live, obsolete): (Vec<u64>, Vec<u64>) = outcome
        .live
        .iter()
        .chain(outcome.obsolete.iter())
        .partition(|g| **g >= keep_from);
    let mut live = live;
    live.sort_unstable();
    let wal = Wal::create(
        fs.clone(),
        &dir,
        new_gen,
        opts.wal_segment_bytes,
        opts.wal_recycle_segments,
        live,
        obsolete,
    )?;
    // Files no version references are leftovers of work that never committed.
    let live_numbers: std::collections::HashSet<u64> = version
        .levels
        .iter()
        .flatten()
        .map(|f| f.desc.number)
        .collect();
    for name in &names {
        let remove = match filename::parse(name) {
            Some(FileKind::Table(n)) => !live_numbers.contains(&n),
            Some(FileKind::ValueLog(n)) => !state.segments.contains_key(&n),
            Some(FileKind::Temp) => true,
            _ => false,
        };
        if remove {
            let p = dir.join(name);
            fs.remove_file(&p).ctx("remove", &p)?;
        }
    }
    drop(metas);
    // Collected segments' files are kept for the write path to reuse (two at most).
    let recycler = write_log_on(&opts).then(|| Arc::new(Recycler::new(RECYCLED_SEGMENTS)));
    let vlog = VlogState::new(&state, &dir, &fs, &readers, recycler.clone());
    let gc_safe_point_floor = state.gc_safe_point;
    let txn_safe_point_floor = state.txn_safe_point;
    let mem = Arc::new(Memtable::new(opts.write_buffer_bytes));
    let version = Arc::new(version);
    let sv = Arc::new(SuperVersion {
        mem: mem.clone(),
        imms: Vec::new(),
        version: version.clone(),
        table_range_dels: has_table_range_dels(&version),
        vlog: vlog.segments.clone(),
    });
    let state = State {
        version,
        mem: mem.clone(),
        imms: VecDeque::new(),
        frozen_total: 0,
        flushed_total: 0,
        manifest,
        manifest_state: state,
        log_floor: new_gen,
        flushing: false,
        compacting: 0,
        full_compaction: false,
        bg_error: None,
        bg_errors: 0,
        shutting_down: false,
        vlog,
    };
    let l0_files = state.version.levels[0].len();
    let write_log = write_log(&opts, &dir, &fs, &next_file_number, recycler);
    Ok(Inner {
        dir,
        fs,
        lock: Mutex::new(Some(lock)),
        cache,
        snapshots: Arc::new(SnapshotList::default()),
        last_seq: AtomicU64::new(last_seq),
        // A value-log GC relied on the safe point it recorded: reads never go below it again.
        gc_safe_point: AtomicU64::new(gc_safe_point_floor),
        // Compaction collected write records under it: it never restarts lower.
        txn_safe_point: AtomicU64::new(txn_safe_point_floor),
        next_file_number,
        pending: Mutex::new(VecDeque::new()),
        write: Mutex::new(WriteState {
            wal,
            vlog: write_log,
            mem,
            applied: BTreeMap::new(),
            last_seq,
            scratch: Vec::new(),
            logged: 0,
            synced_mark: 0,
        }),
        l0_files: AtomicUsize::new(l0_files),
        imm_count: AtomicUsize::new(0),
        l0_stopped: AtomicBool::new(false),
        state: Mutex::new(state),
        state_cv: Condvar::new(),
        sv: RwLock::new(sv),
        poisoned: Mutex::new(None),
        is_poisoned: AtomicBool::new(false),
        closed: AtomicBool::new(false),
        counters: Counters::default(),
        iterators_opened: AtomicU64::new(0),
        iterators_at_flush: AtomicU64::new(0),
        threads: Mutex::new(Vec::new()),
        readers,
        vlog_gc: Mutex::new(()),
        log_syncer: LogSyncer::default(),
        touched: AtomicU64::new(0),
        opts,
    })
}

/// True when values are separated at commit (`Options::vlog_on_write` and some column
/// family has a threshold).
fn write_log_on(opts: &Options) -> bool {
    opts.vlog_on_write && opts.value_log_enabled()
}

/// The write path's value log, when values are separated at commit.
fn write_log(
    opts: &Options,
    dir: &Path,
    fs: &Arc<dyn FileSystem>,
    next_file_number: &Arc<AtomicU64>,
    recycler: Option<Arc<Recycler>>,
) -> Option<WriteLog> {
    if !write_log_on(opts) {
        return None;
    }
    let thresholds = Thresholds::from_options(opts)?;
    Some(WriteLog::new(WriteLogSettings {
        dir: dir.to_path_buf(),
        fs: fs.clone(),
        next_file_number: next_file_number.clone(),
        thresholds,
        writer: SegmentWriterOptions {
            target_segment_bytes: opts.vlog_segment_bytes,
            ..Default::default()
        },
        unsafe_skip_sync: opts.unsafe_vlog_skip_write_sync,
        recycler,
    }))
}

/// Copies `src` to `dst` and (with `sync`) makes the copy durable (when hard links are unavailable).
fn copy_file(fs: &dyn FileSystem, src: &Path, dst: &Path, sync: bool) -> Result<()> {
    let from = fs.open(src, OpenMode::Read).ctx("open", src)?;
    let to = fs.open(dst, OpenMode::CreateNew).ctx("create", dst)?;
    let len = from.len().ctx("stat", src)?;
    let mut buf = vec![0u8; (1 << 20).min(len.max(1) as usize)];
    let mut off = 0u64;
    while off < len {
        let n = ((len - off) as usize).min(buf.len());
        from.read_exact_at(&mut buf[..n], off).ctx("read", src)?;
        to.write_all_at(&buf[..n], off).ctx("write", dst)?;
        off += n as u64;
    }
    if sync {
        to.sync_data().ctx("fdatasync", dst)?;
    }
    Ok(())
}

fn open_table(
    fs: &Arc<dyn FileSystem>,
    dir: &Path,
    desc: &FileDesc,
    cache: Option<Arc<BlockCache>>,
) -> Result<Arc<FileMeta>> {
    let path = filename::table(dir, desc.number);
    let file = fs.open(&path, OpenMode::Read).ctx("open table", &path)?;
    let len = file.len().ctx("stat", &path)?;
    if len != desc.size {
        return Err(Error::corruption(
            &path,
            len,
            format!("table is {len} bytes but the manifest says {}", desc.size),
        ));
    }
    let table = Table::open_with_global_seq(
        file,
        path.clone(),
        desc.number,
        desc.size,
        cache,
        desc.global_seq,
    )?;
    Ok(Arc::new(FileMeta::new(
        desc.clone(),
        table,
        fs.clone(),
        path,
    )))
}

impl Inner {
    /// Marks the tracked spaces `batch` puts into, before the puts are visible
    /// ([`Db::may_hold`]).
    fn note_tracked(&self, batch: &WriteBatch) {
        let tracked = &self.opts.tracked_spaces;
        let all = if tracked.len() == 64 {
            u64::MAX
        } else {
            (1u64 << tracked.len()) - 1
        };
        if tracked.is_empty() || self.touched.load(Ordering::Relaxed) == all {
            return;
        }
        let mut mask = 0u64;
        for e in batch.iter_entries() {
            if e.kind == Kind::Delete {
                continue;
            }
            for (i, s) in tracked.iter().enumerate() {
                if e.logical_key.starts_with(&s.prefix()) {
                    mask |= 1 << i;
                }
            }
        }
        if mask != 0 {
            self.touched.fetch_or(mask, Ordering::SeqCst);
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        self.check_open()?;
        if self.is_poisoned.load(Ordering::Acquire) {
            let m = self.poisoned.lock().clone().unwrap_or_default();
            return Err(Error::Poisoned(m));
        }
        Ok(())
    }

    fn poison(&self, e: &Error) {
        let mut p = self.poisoned.lock();
        if p.is_none() {
            tracing::error!(error = %e, "durability failure: the database refuses writes until reopened");
            *p = Some(e.to_string());
        }
        self.is_poisoned.store(true, Ordering::Release);
    }

    /// The error a follower sees when its group's commit failed with `e`.
    fn error_for_follower(&self, e: &Error) -> Error {
        match e {
            Error::Closed => Error::Closed,
            Error::Background(m) => Error::Background(m.clone()),
            Error::Poisoned(m) => Error::Poisoned(m.clone()),
            e if self.is_poisoned.load(Ordering::Acquire) => Error::Poisoned(e.to_string()),
            e => Error::Background(format!("group commit failed: {e}")),
        }
    }

    /// Makes the write path's value log durable (before any WAL fdatasync).
    fn sync_vlog(&self, ws: &mut WriteState) -> Result<()> {
        let Some(log) = ws.vlog.as_mut() else {
            return Ok(());
        };
        if log.unsynced_bytes() == 0 {
            return Ok(());
        }
        log.sync().inspect_err(|e| self.poison(e))?;
        Counters::add(
            &self.counters.vlog_write_syncs,
            "nokv_vlog_write_syncs_total",
            1,
        );
        Ok(())
    }

    /// Makes every logged write durable: the value log first, then the WAL that points into it.
    fn sync_logs(&self, ws: &mut WriteState) -> Result<()> {
        self.sync_vlog(ws)?;
        if ws.wal.unsynced_bytes() > 0 {
            ws.wal.sync().inspect_err(|e| self.poison(e))?;
            Counters::add(&self.counters.wal_syncs, "nokv_wal_syncs_total", 1);
        }
        ws.synced_mark = ws.logged;
        Ok(())
    }

    /// Keeps relaxed writes within `relaxed_sync_interval_bytes` of a sync: past half the
    /// interval a background sync is requested; only a full interval without a completed
    /// sync makes the writer sync inline.
    fn relaxed_sync(&self, ws: &mut WriteState) -> Result<()> {
        let interval = self.opts.relaxed_sync_interval_bytes;
        let background = self.log_syncer.synced().inspect_err(|e| self.poison(e))?;
        let unsynced = ws.logged.saturating_sub(ws.synced_mark.max(background));
        if unsynced >= interval {
            // The background sync fell behind. A running one covers most of the window:
            // wait for it rather than syncing the same bytes twice, then sync what is left.
            let t = Instant::now();
            let background = self
                .log_syncer
                .wait_idle(RELAXED_SYNC_WAIT)
                .inspect_err(|e| self.poison(e))?;
            if ws.logged.saturating_sub(ws.synced_mark.max(background)) >= interval {
                self.sync_logs(ws)?;
            }
            let c = &self.counters;
            Counters::add(&c.relaxed_sync_waits, "nokv_relaxed_sync_waits_total", 1);
            Counters::add(
                &c.relaxed_sync_wait_micros,
                "nokv_relaxed_sync_wait_micros_total",
                t.elapsed().as_micros() as u64,
            );
            return Ok(());
        }
        if unsynced >= interval / 2 {
            self.log_syncer.request(ws.logged, || ws.sync_files());
        }
        Ok(())
    }

    /// The background log sync thread.
    fn log_sync_loop(&self) {
        self.log_syncer.run(|vlog, wal| {
            Counters::add(
                &self.counters.vlog_write_syncs,
                "nokv_vlog_write_syncs_total",
                vlog,
            );
            Counters::add(&self.counters.wal_syncs, "nokv_wal_syncs_total", wal);
        });
    }

    /// Queues a write and commits it, as the group leader or as a follower.
    fn submit(
        &self,
        batch: WriteBatch,
        opaque: Vec<(u8, Vec<u8>)>,
        logged: bool,
        applied: Vec<(u64, u64)>,
        sync: bool,
    ) -> Result<WalPosition> {
        // A write can wait for the WAL's fdatasync, another writer or a write stall.
        crate::fs::guard::check("engine write");
        self.check_writable()?;
        let o = &self.opts;
        batch.validate(o.max_key_bytes, o.max_value_bytes, o.max_batch_bytes)?;
        self.note_tracked(&batch);
        let req = Arc::new(PendingWrite {
            batch,
            opaque,
            logged,
            applied,
            sync,
            done: AtomicBool::new(false),
            result: Mutex::new(None),
            cv: Condvar::new(),
        });
        if !sync {
            // Nothing to share: a write that needs no fdatasync commits on its own rather
            // than sleeping in the queue while a leader writes for it.
            let mut ws = self.write.lock();
            return self.commit_group(&mut ws, std::slice::from_ref(&req));
        }
        let mut queue = self.pending.lock();
        queue.push_back(req.clone());
        // Followers sleep until a leader has committed them or they reach the front.
        while !req.done.load(Ordering::Acquire)
            && !queue.front().is_some_and(|f| Arc::ptr_eq(f, &req))
        {
            req.cv.wait(&mut queue);
        }
        if req.done.load(Ordering::Acquire) {
            drop(queue);
            return req.result.lock().take().unwrap_or(Err(Error::Closed));
        }
        // Leader: take everything queued (bounded), commit it with one WAL write and sync.
        let mut bytes = 0;
        let mut range_deletes = 0;
        let mut group = Vec::new();
        for r in queue.iter() {
            let n = r.batch.encoded_len() + r.opaque.iter().map(|(_, v)| v.len()).sum::<usize>();
            // A group's range deletes must fit in one (fresh) memtable.
            let rd = r.batch.range_delete_count();
            if !group.is_empty()
                && (bytes + n > GROUP_BYTES_MAX || range_deletes + rd > MAX_RANGE_DELETES_PER_BATCH)
            {
                break;
            }
            bytes += n;
            range_deletes += rd;
            group.push(r.clone());
        }
        drop(queue);
        let res = {
            let mut ws = self.write.lock();
            self.commit_group(&mut ws, &group)
        };
        let mut queue = self.pending.lock();
        for r in &group {
            let front = queue
                .pop_front()
                .expect("the group is at the front of the queue");
            debug_assert!(
                Arc::ptr_eq(&front, r),
                "the queue's front is the committed group"
            );
            if Arc::ptr_eq(r, &req) {
                continue;
            }
            *r.result.lock() = Some(match &res {
                Ok(pos) => Ok(*pos),
                Err(e) => Err(self.error_for_follower(e)),
            });
            r.done.store(true, Ordering::Release);
            r.cv.notify_one();
        }
        if let Some(next) = queue.front() {
            next.cv.notify_one();
        }
        drop(queue);
        res
    }

    /// Writes one group to the WAL (one write, at most one fdatasync) and applies it.
    ///
    /// With the write-path value log, the group's large values are first appended to the
    /// value log (one write) and the WAL records carry their pointers; a sync makes the
    /// value log durable before the WAL, so a durable WAL record never points at bytes
    /// that could be lost.
    fn commit_group(
        &self,
        ws: &mut WriteState,
        group: &[Arc<PendingWrite>],
    ) -> Result<WalPosition> {
        self.check_writable()?;
        let range_deletes = group.iter().map(|r| r.batch.range_delete_count()).sum();
        // A group that adds nothing (an empty unlogged batch that records an applied
        // index) never waits for room: the owner's apply of a committed entry must not
        // stall on the write it just made.
        if group
            .iter()
            .any(|r| !r.batch.is_empty() || !r.opaque.is_empty())
        {
            self.make_room(ws, range_deletes)?;
        }
        let mut seq = ws.last_seq;
        let mut payloads: Vec<Vec<u8>> = Vec::new();
        let mut types: Vec<u8> = Vec::new();
        let mut sync = false;
        let mut user_bytes = 0u64;
        let mut user_writes = 0u64;
        let vlog_before = ws.vlog.as_ref().map(|v| (v.appended(), v.reused()));
        let mut vlog_group_bytes = 0u64;
        for r in group {
            let first = seq + 1;
            seq += r.batch.len() as u64;
            if r.logged && !r.batch.is_empty() {
                let mut p = std::mem::take(&mut ws.scratch);
                p.clear();
                match ws.vlog.as_mut() {
                    Some(log) if log.may_separate(r.batch.max_value_len()) => r
                        .batch
                        .encode_separating(first, &mut p, |e, seq, out| {
                            let version = e.version.unwrap_or(seq);
                            log.append(e.logical_key, version, seq, e.kind, e.value, out)
                        })
                        .inspect_err(|e| self.poison(e))?,
                    _ => r.batch.encode_with_seq(first, &mut p),
                }
                payloads.push(p);
                types.push(REC_BATCH);
            }
            for (tag, data) in &r.opaque {
                let mut p = Vec::with_capacity(data.len() + 1);
                p.push(*tag);
                p.extend_from_slice(data);
                payloads.push(p);
                types.push(REC_OPAQUE);
            }
            sync |= r.sync;
            user_writes += r.batch.len() as u64;
        }
        if let Some(log) = ws.vlog.as_mut() {
            // The values are in the file (a process crash loses nothing) before the WAL
            // record that points at them is written.
            log.write().inspect_err(|e| self.poison(e))?;
            if let Some((_, reused)) = vlog_before.filter(|(_, r)| *r < log.reused()) {
                Counters::add(
                    &self.counters.vlog_segments_reused,
                    "nokv_vlog_segments_reused_total",
                    log.reused() - reused,
                );
            }
            if let (Some(((v0, vb0, rb0), _)), (v1, vb1, rb1)) = (vlog_before, log.appended()) {
                vlog_group_bytes = rb1 - rb0;
                if v1 > v0 {
                    self.note_separated((v1 - v0, vb1 - vb0));
                    Counters::add(
                        &self.counters.vlog_write_values,
                        "nokv_vlog_write_values_total",
                        v1 - v0,
                    );
                    Counters::add(
                        &self.counters.vlog_write_bytes,
                        "nokv_vlog_write_bytes_total",
                        rb1 - rb0,
                    );
                }
            }
        }
        let mut pos = WalPosition {
            segment: ws.wal.active_segment(),
            offset: 0,
        };
        if !payloads.is_empty() {
            let records: Vec<(u8, &[u8])> = types
                .iter()
                .copied()
                .zip(payloads.iter().map(|p| &p[..]))
                .collect();
            let wal_bytes: usize = records
                .iter()
                .map(|(_, p)| p.len() + crate::record::HEADER_LEN)
                .sum();
            if ws.wal.append_rotates(wal_bytes) {
                // Rotating fdatasyncs the WAL segment: the values it points at go first.
                self.sync_vlog(ws)?;
            }
            pos = ws.wal.append(&records).inspect_err(|e| self.poison(e))?;
            Counters::add(
                &self.counters.wal_bytes,
                "nokv_wal_bytes_total",
                wal_bytes as u64,
            );
            ws.logged += wal_bytes as u64 + vlog_group_bytes;
            if sync && !self.opts.unsafe_ack_before_sync {
                self.sync_logs(ws)?;
            } else {
                self.relaxed_sync(ws)?;
            }
            Counters::add(&self.counters.wal_groups, "nokv_wal_groups_total", 1);
            Counters::add(
                &self.counters.wal_group_writes,
                "nokv_wal_group_batches_total",
                group.len() as u64,
            );
        }
        if let Some(p) = payloads.pop() {
            ws.scratch = p;
        }
        let mut seq = ws.last_seq;
        let mut range_dels = Vec::new();
        // Large groups go in as one sorted, interleaved insert (see `Memtable::add_many`).
        let entries: usize = group.iter().map(|r| r.batch.len()).sum();
        let mut many = Vec::new();
        if entries >= ADD_MANY_MIN_ENTRIES {
            many.reserve(entries);
        }
        for r in group {
            for op in r.batch.iter_ops() {
                seq += 1;
                let e = match op {
                    BatchOp::Point(e) => e,
                    BatchOp::RangeDelete(d) => {
                        range_dels.push(d.tombstone(seq));
                        continue;
                    }
                };
                let version = e.version.unwrap_or(seq);
                if entries >= ADD_MANY_MIN_ENTRIES {
                    many.push((version, seq, e.kind, e.logical_key, e.value));
                } else {
                    ws.mem.add(version, seq, e.kind, e.logical_key, e.value);
                }
                user_bytes += (e.logical_key.len() - PREFIX_LEN + e.value.len()) as u64;
            }
            for &(region, index) in &r.applied {
                let slot = ws.applied.entry(region).or_insert(0);
                *slot = (*slot).max(index);
            }
        }
        if !many.is_empty() {
            ws.mem.add_many(many);
        }
        if !range_dels.is_empty() {
            // `make_room` made room before the group was logged, so this cannot fail; if it
            // did, the logged group would be half applied: refuse further writes.
            if let Err(e) = ws.mem.add_range_tombstones(range_dels) {
                self.poison(&e);
                return Err(e);
            }
        }
        ws.last_seq = seq;
        self.last_seq.store(seq, Ordering::Release);
        Counters::add(
            &self.counters.user_bytes,
            "nokv_user_bytes_total",
            user_bytes,
        );
        Counters::add(
            &self.counters.user_writes,
            "nokv_user_writes_total",
            user_writes,
        );
        Ok(pos)
    }

    /// Freezes a full memtable and applies L0 back-pressure before a group is written.
    ///
    /// A memtable without room for the group's `range_deletes` counts as full.
    fn make_room(&self, ws: &mut WriteState, range_deletes: usize) -> Result<()> {
        let mut slowed = false;
        loop {
            self.check_writable()?;
            let (l0, imms, bg_error) = {
                let st = self.state.lock();
                (
                    st.version.levels[0].len(),
                    st.imms.len(),
                    st.bg_error.clone(),
                )
            };
            let mem_full = ws.mem.approximate_bytes() >= self.opts.write_buffer_bytes
                || range_deletes > ws.mem.range_tombstone_room();
            if l0 >= self.opts.l0_slowdown_trigger && l0 < self.opts.l0_stop_trigger && !slowed {
                // Slow this group down so compaction can keep up, once per group.
                let t = Instant::now();
                std::thread::sleep(Duration::from_millis(1));
                slowed = true;
                Counters::add(&self.counters.slowdowns, "nokv_write_slowdowns_total", 1);
                Counters::add(
                    &self.counters.stall_micros,
                    "nokv_write_stall_micros_total",
                    t.elapsed().as_micros() as u64,
                );
                continue;
            }
            let must_wait =
                self.l0_stop(l0) || (mem_full && imms >= self.opts.max_immutable_memtables);
            if must_wait {
                if let Some(e) = bg_error {
                    return Err(Error::Background(format!(
                        "writes are stalled and background work is failing: {e}"
                    )));
                }
                let t = Instant::now();
                let mut st = self.state.lock();
                if st.shutting_down {
                    return Err(Error::Closed);
                }
                self.state_cv.wait_for(&mut st, Duration::from_millis(50));
                drop(st);
                Counters::add(
                    &self.counters.stall_micros,
                    "nokv_write_stall_micros_total",
                    t.elapsed().as_micros() as u64,
                );
                continue;
            }
            if mem_full {
                self.switch_memtable(ws)?;
            }
            return Ok(());
        }
    }

    /// Rotates the WAL, freezes the active memtable and wakes the flusher.
    fn switch_memtable(&self, ws: &mut WriteState) -> Result<()> {
        // The memtable's value-log segment is finished (and synced) before the WAL rotation
        // syncs the records that point into it; the next memtable starts a new segment.
        let values = match ws.vlog.as_mut() {
            Some(log) => log.seal().inspect_err(|e| self.poison(e))?,
            None => MemtableValues::default(),
        };
        let next_gen = ws.wal.rotate().inspect_err(|e| self.poison(e))?;
        // Sealing synced the value log and rotating the WAL: everything logged is durable.
        ws.synced_mark = ws.logged;
        let new_mem = Arc::new(Memtable::new(self.opts.write_buffer_bytes));
        let old = std::mem::replace(&mut ws.mem, new_mem.clone());
        let applied = std::mem::take(&mut ws.applied);
        let mut st = self.state.lock();
        st.frozen_total += 1;
        let ordinal = st.frozen_total;
        st.imms.push_back(Immutable {
            mem: old,
            next_gen,
            last_seq: ws.last_seq,
            applied,
            ordinal,
            values: Arc::new(values),
        });
        st.mem = new_mem;
        self.install_sv(&st);
        let floor = st.log_floor;
        let opaque = st.manifest_state.opaque_floor;
        drop(st);
        self.state_cv.notify_all();
        ws.wal
            .release_below(opaque.map_or(floor, |o| o.min(floor)))
            .inspect_err(|e| self.poison(e))?;
        Ok(())
    }

    /// Whether L0 stops writes at `l0` files, with hysteresis: once stopped, writes resume
    /// only when L0 is a margin below the stop trigger.
    fn l0_stop(&self, l0: usize) -> bool {
        let margin = ((self.opts.l0_stop_trigger - self.opts.l0_slowdown_trigger) / 4).max(1);
        let was = self.l0_stopped.load(Ordering::Acquire);
        let now =
            l0 >= self.opts.l0_stop_trigger || (was && l0 + margin > self.opts.l0_stop_trigger);
        if now != was {
            self.l0_stopped.store(now, Ordering::Release);
        }
        now
    }

    /// See [`Db::write_stall`].
    fn write_stall(&self) -> WriteStall {
        let l0 = self.l0_files.load(Ordering::Acquire);
        if self.l0_stop(l0) {
            return WriteStall::Stop;
        }
        if self.imm_count.load(Ordering::Acquire) >= self.opts.max_immutable_memtables {
            let active = self.sv.read().mem.approximate_bytes();
            if active >= self.opts.write_buffer_bytes {
                return WriteStall::Stop;
            }
        }
        if l0 >= self.opts.l0_slowdown_trigger {
            return WriteStall::Slowdown;
        }
        WriteStall::None
    }

    fn install_sv(&self, st: &State) {
        self.l0_files
            .store(st.version.levels[0].len(), Ordering::Release);
        let sv = Arc::new(SuperVersion {
            mem: st.mem.clone(),
            imms: st.imms.iter().rev().map(|i| i.mem.clone()).collect(),
            version: st.version.clone(),
            table_range_dels: has_table_range_dels(&st.version),
            vlog: st.vlog.segments.clone(),
        });
        let old = std::mem::replace(&mut *self.sv.write(), sv);
        // After the new super version: `write_stall` reads the count first, so one that sees
        // a memtable switch's new count also sees its new (empty) active memtable, and never
        // takes the full one just frozen for a full active one (a false `Stop`).
        self.imm_count.store(st.imms.len(), Ordering::Release);
        // Dropped after the lock: the old version may hold the last reference to an
        // obsolete file, whose deletion must not hold readers up.
        drop(old);
    }

    /// Records `edit` in the manifest, then installs the resulting version.
    fn log_and_apply(
        &self,
        st: &mut State,
        mut edit: VersionEdit,
        opened: &[Arc<FileMeta>],
    ) -> Result<()> {
        edit.next_file_number = Some(self.next_file_number.load(Ordering::SeqCst));
        self.prepare_vlog_edit(st, &mut edit);
        // The edit's new tables (a flush's, a compaction's, an ingest's) are written and
        // synced but not recorded.
        crate::crash_point!("manifest::before_edit");
        if let Err(e) = st.manifest.append(&edit) {
            // Nothing changed in memory: the caller still owns the edit's inputs.
            self.poison(&e);
            return Err(e);
        }
        // The edit is durable from here on; the in-memory state must follow it.
        if let Err(m) = st.manifest_state.apply(&edit) {
            panic!("an edit built from the current state does not apply to it: {m}");
        }
        crate::crash_point!("manifest::after_edit");
        self.apply_vlog_edit(st, &edit);
        st.version = Arc::new(st.version.apply(&edit, opened));
        if let Some(v) = edit.log_floor {
            st.log_floor = v;
        }
        self.install_sv(st);
        if st.manifest.len() > self.opts.manifest_rewrite_bytes {
            let number = self.next_file_number.fetch_add(1, Ordering::SeqCst);
            st.manifest_state.next_file_number = self.next_file_number.load(Ordering::SeqCst);
            let snap = st.manifest_state.snapshot_edit();
            match ManifestWriter::create(self.fs.clone(), &self.dir, number, &snap) {
                Ok(m) => {
                    st.manifest = m;
                    if let Err(e) = st.manifest.remove_others() {
                        tracing::warn!(error = %e, "could not remove an old manifest");
                    }
                }
                // The edit is in the old manifest (and maybe the new one): it stands, but
                // which manifest CURRENT names is uncertain, so no further edit may be written.
                Err(e) => self.poison(&e),
            }
        }
        Ok(())
    }

    /// True when a memtable (active or frozen) holds a key of `range`.
    fn memtables_hold(&self, range: &RegionRange) -> bool {
        let sv = self.sv.read().clone();
        std::iter::once(&sv.mem)
            .chain(sv.imms.iter())
            .any(|m| region_snapshot::has_keys_in(&mut m.iter(), range))
    }

    /// Installs the checked tables of `manifest` (in `dir`) under one new sequence number;
    /// `None` when a write into the range slipped in first (the caller flushes and retries).
    fn ingest_verified(
        &self,
        dir: &Path,
        manifest: &SnapshotManifest,
    ) -> Result<Option<IngestReport>> {
        // Writers wait while the tables go in, so the new sequence number is the next one.
        let ws = self.write.lock();
        self.check_writable()?;
        if self.memtables_hold(&manifest.range) {
            return Ok(None);
        }
        let mut ws = ws;
        let global_seq = ws.last_seq + 1;
        let mut copied: Vec<PathBuf> = Vec::new();
        let result = self.link_and_apply(dir, manifest, global_seq, &mut copied);
        match result {
            Ok(report) => {
                ws.last_seq = global_seq;
                self.last_seq.store(global_seq, Ordering::Release);
                Ok(Some(report))
            }
            Err(e) => {
                for p in &copied {
                    let _ = self.fs.remove_file(p);
                }
                Err(e)
            }
        }
    }

    fn link_and_apply(
        &self,
        dir: &Path,
        manifest: &SnapshotManifest,
        global_seq: u64,
        copied: &mut Vec<PathBuf>,
    ) -> Result<IngestReport> {
        let mut linked = true;
        let mut opened = Vec::new();
        for sf in &manifest.files {
            let src = dir.join(&sf.name);
            let number = self.next_file_number.fetch_add(1, Ordering::SeqCst);
            let dst = filename::table(&self.dir, number);
            copied.push(dst.clone());
            if self.fs.hard_link(&src, &dst).is_err() {
                linked = false;
                copy_file(&*self.fs, &src, &dst, !self.opts.unsafe_ingest_skip_sync)?;
            }
            let desc = FileDesc {
                number,
                size: sf.size,
                entries: sf.entries,
                smallest: Vec::new(),
                largest: Vec::new(),
                global_seq: Some(global_seq),
            };
            let meta = open_table(&self.fs, &self.dir, &desc, self.cache.clone())?;
            let props = meta.table.properties();
            let desc = FileDesc {
                smallest: props.smallest.clone(),
                largest: props.largest.clone(),
                ..desc
            };
            opened.push(Arc::new(FileMeta::new(
                desc,
                meta.table.clone(),
                self.fs.clone(),
                dst,
            )));
        }
        if !self.opts.unsafe_ingest_skip_sync {
            self.fs.sync_dir(&self.dir).ctx("fsync dir", &self.dir)?;
        }
        let mut st = self.state.lock();
        let mut edit = VersionEdit {
            seq_floor: Some(global_seq),
            // The exporter may have collected records below its safe point: reads below
            // it are refused here too, also after a restart.
            txn_safe_point: manifest.txn_safe_point,
            ..Default::default()
        };
        if let Some(t) = manifest.txn_safe_point {
            self.txn_safe_point.fetch_max(t, Ordering::AcqRel);
        }
        let mut placed = Vec::new();
        for m in &opened {
            let (lo, hi) = (m.desc.smallest_logical(), m.desc.largest_logical());
            let mut level = 0;
            for l in (1..st.version.levels.len()).rev() {
                if (0..=l).all(|u| st.version.overlapping(u, Some(lo), Some(hi)).is_empty()) {
                    level = l;
                    break;
                }
            }
            edit.added.push((level, m.desc.clone()));
            placed.push((m.desc.number, level));
        }
        self.log_and_apply(&mut st, edit, &opened)?;
        self.state_cv.notify_all();
        Ok(IngestReport {
            global_seq,
            placed,
            bytes: manifest.total_bytes(),
            entries: manifest.total_entries(),
            linked,
        })
    }

    /// The GC safe point compaction and reads obey: the owner's with
    /// `Options::retain_versions`, else every version (only snapshots keep old data).
    fn safe_point(&self) -> u64 {
        if self.opts.retain_versions {
            self.gc_safe_point.load(Ordering::Acquire)
        } else {
            MAX_VERSION
        }
    }

    /// The (version, sequence) a read with `ro` sees; refuses timestamps below the safe point.
    fn read_point(&self, ro: &ReadOptions) -> Result<(u64, u64)> {
        let seq = match &ro.snapshot {
            Some(s) => s.sequence(),
            None => self.last_seq.load(Ordering::Acquire),
        };
        let ts = ro.read_ts.unwrap_or(MAX_VERSION);
        if ts != MAX_VERSION {
            let safe_point = self.safe_point();
            if ts < safe_point {
                return Err(Error::BelowSafePoint { ts, safe_point });
            }
        }
        Ok((ts, seq))
    }

    /// Whether `NS_KV`'s long value of `key` at `start_ts` is still referred to by its
    /// transaction's lock or put record, as of now (see `txn::gc::value_referenced`).
    fn txn_value_referenced(&self, key: &[u8], start_ts: u64) -> bool {
        if self.opts.unsafe_txn_gc_drop_referenced_values {
            return false;
        }
        let sv = self.sv.read().clone();
        let seq = self.last_seq.load(Ordering::Acquire);
        let find = |logical: &[u8], ts: u64| find_in(&sv, logical, ts, seq, BlockRead::NoFill);
        crate::txn::gc::value_referenced(&find, crate::key::NS_KV, key, start_ts)
    }

    /// The newest entry of `logical` visible at (`ts`, `seq`) (see [`find_in`]).
    fn find(&self, logical: &[u8], ts: u64, seq: u64, mode: BlockRead) -> Result<Option<Found>> {
        let sv = self.sv.read().clone();
        find_in(&sv, logical, ts, seq, mode)
    }

    /// The readers compaction must preserve: live snapshots and the GC safe point.
    fn gc_policy(&self) -> GcPolicy {
        GcPolicy::new(self.snapshots.all(), self.safe_point())
    }

    /// The most urgent compaction ([`compaction::pick`]), else one that carries range
    /// tombstones down to files they delete whole ([`compaction::pick_range_del`]).
    fn pick_compaction(&self, v: &Version) -> Option<Plan> {
        let scanned = self
            .iterators_opened
            .load(Ordering::Relaxed)
            .saturating_sub(self.iterators_at_flush.load(Ordering::Relaxed))
            >= compaction::SCAN_PRESSURE_ITERATORS;
        compaction::pick(v, &self.opts, scanned)
            .or_else(|| compaction::pick_range_del(v, &self.opts, &self.gc_policy()))
    }

    fn smallest_snapshot(&self) -> u64 {
        let last = self.last_seq.load(Ordering::Acquire);
        self.snapshots.oldest().map_or(last, |s| s.min(last))
    }

    /// Starts the flush thread and the compaction threads.
    fn start_threads(self: &Arc<Self>) -> Result<()> {
        let mut threads = self.threads.lock();
        let me = self.clone();
        let spawn_err = |e| Error::io("spawn background thread", &self.dir, e);
        threads.push(
            std::thread::Builder::new()
                .name("nokv-flush".into())
                .spawn(move || {
                    me.lower_priority("flush");
                    me.guarded("flush", Inner::flush_loop)
                })
                .map_err(spawn_err)?,
        );
        {
            let me = self.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("nokv-log-sync".into())
                    .spawn(move || me.guarded("log sync", Inner::log_sync_loop))
                    .map_err(spawn_err)?,
            );
        }
        for i in 0..self.opts.compaction_threads.max(1) {
            let me = self.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("nokv-compact-{i}"))
                    .spawn(move || {
                        me.lower_priority("compaction");
                        me.guarded("compaction", Inner::compaction_loop)
                    })
                    .map_err(spawn_err)?,
            );
        }
        if self.opts.value_log_enabled() || !self.state.lock().vlog.segments.is_empty() {
            let me = self.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("nokv-vlog-gc".into())
                    .spawn(move || {
                        me.lower_priority("value-log GC");
                        me.guarded("value-log GC", Inner::vlog_gc_loop)
                    })
                    .map_err(spawn_err)?,
            );
        }
        Ok(())
    }

    /// Applies `Options::background_nice` to the calling background thread; a failure
    /// is logged (the thread runs on at the priority it has).
    fn lower_priority(&self, what: &'static str) {
        if let Some(nice) = self.opts.background_nice {
            if let Err(e) = crate::priority::lower_current_thread(nice) {
                tracing::warn!(thread = what, nice, error = %e, "cannot lower the priority of a background thread");
            }
        }
    }

    /// Runs a background loop; if it panics (a broken invariant), the database is poisoned
    /// so that writers get an error instead of waiting forever for work that will not happen.
    fn guarded(&self, what: &'static str, body: fn(&Inner)) {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(self))).is_err() {
            self.poison(&Error::Background(format!("the {what} thread panicked")));
            self.state_cv.notify_all();
        }
    }

    fn flush_loop(&self) {
        let mut st = self.state.lock();
        loop {
            if st.shutting_down {
                return;
            }
            let held = || self.opts.test_hold_flush.as_ref().is_some_and(|h| h());
            let ready = !st.imms.is_empty()
                && !st.flushing
                && !self.is_poisoned.load(Ordering::Acquire)
                && !held();
            if !ready {
                self.state_cv.wait_for(&mut st, Duration::from_millis(200));
                continue;
            }
            let imm = st.imms.front().expect("checked non-empty");
            let (mem, next_gen, last_seq, applied, ordinal, values) = (
                imm.mem.clone(),
                imm.next_gen,
                imm.last_seq,
                imm.applied.clone(),
                imm.ordinal,
                imm.values.clone(),
            );
            st.flushing = true;
            drop(st);
            let t = Instant::now();
            let res = self.run_flush(&mem, &values);
            st = self.state.lock();
            st.flushing = false;
            match res {
                Ok(Flushed {
                    tables: outputs,
                    segments,
                    discards,
                }) => {
                    let bytes: u64 = outputs.iter().map(|m| m.desc.size).sum();
                    let edit = VersionEdit {
                        added: outputs.iter().map(|m| (0, m.desc.clone())).collect(),
                        log_floor: Some(next_gen),
                        last_seq: Some(last_seq),
                        applied: applied.into_iter().collect(),
                        // The segments become live with the table that points into them
                        // (the write path's with what the flush dropped counted as garbage).
                        segments_added: segments,
                        discards,
                        ..Default::default()
                    };
                    let front_matches = st.imms.front().is_some_and(|i| i.ordinal == ordinal);
                    debug_assert!(front_matches, "only the flusher pops frozen memtables");
                    let flushed = st.imms.pop_front();
                    if let Err(e) = self.log_and_apply(&mut st, edit, &outputs) {
                        // Not applied: the memtable stays readable (its data is still in the WAL).
                        if let Some(imm) = flushed {
                            st.imms.push_front(imm);
                        }
                        self.install_sv(&st);
                        for m in &outputs {
                            m.mark_obsolete();
                        }
                        self.note_bg_error(&mut st, &e);
                        continue;
                    }
                    st.flushed_total += 1;
                    st.bg_error = None;
                    let opened = self.iterators_opened.load(Ordering::Relaxed);
                    self.iterators_at_flush.store(opened, Ordering::Relaxed);
                    Counters::add(&self.counters.flushes, "nokv_flushes_total", 1);
                    Counters::add(&self.counters.flush_bytes, "nokv_flush_bytes_total", bytes);
                    Counters::add(
                        &self.counters.flush_micros,
                        "nokv_flush_micros_total",
                        t.elapsed().as_micros() as u64,
                    );
                    self.state_cv.notify_all();
                }
                Err(e) => {
                    self.note_bg_error(&mut st, &e);
                    // Back off before retrying so a full disk is not hammered.
                    self.state_cv.wait_for(&mut st, Duration::from_millis(500));
                }
            }
        }
    }

    fn note_bg_error(&self, st: &mut State, e: &Error) {
        tracing::error!(error = %e, "background work failed");
        Counters::add(
            &self.counters.background_errors,
            "nokv_background_errors_total",
            1,
        );
        st.bg_error = Some(e.to_string());
        st.bg_errors += 1;
        self.state_cv.notify_all();
    }

    fn run_flush(&self, mem: &Arc<Memtable>, values: &Arc<MemtableValues>) -> Result<Flushed> {
        if mem.is_empty() {
            return Ok(Flushed::empty(values));
        }
        let settings = JobSettings::new(
            &self.opts,
            0,
            self.dir.clone(),
            self.fs.clone(),
            self.next_file_number.clone(),
            self.cache.clone(),
        );
        let mut job = MergeJob::new(
            Box::new(mem.iter()),
            settings,
            self.smallest_snapshot(),
            self.safe_point(),
            false,
        )
        .with_range_tombstones(mem.range_tombstones(), self.snapshots.all())
        .with_memtable_values(values.clone());
        self.drive(&mut job)?;
        let out = job.finish_all()?;
        self.note_separated(out.separated);
        let (segments, discards) = flush_segments(&out, values);
        let tables = out
            .tables
            .into_iter()
            .map(|o| Arc::new(FileMeta::new(o.desc, o.table, self.fs.clone(), o.path)))
            .collect();
        Ok(Flushed {
            tables,
            segments,
            discards,
        })
    }

    /// Runs a job's steps until done, abandoning it if the database shuts down.
    fn drive(&self, job: &mut MergeJob) -> Result<()> {
        loop {
            if self.closed.load(Ordering::Acquire) {
                job.abandon();
                return Err(Error::Closed);
            }
            match job.step_with(STEP_ENTRIES, &|key, start_ts| {
                self.txn_value_referenced(key, start_ts)
            }) {
                Ok(Step::More) => {}
                Ok(Step::Done) => return Ok(()),
                Err(e) => {
                    job.abandon();
                    return Err(e);
                }
            }
        }
    }

    fn compaction_loop(&self) {
        let mut st = self.state.lock();
        loop {
            if st.shutting_down {
                return;
            }
            let plan = if self.is_poisoned.load(Ordering::Acquire) || st.full_compaction {
                None
            } else {
                self.pick_compaction(&st.version)
            };
            // A value-log GC commit waits for L0 to be still (see `vlog_gc`).
            let plan = plan.filter(|p| p.level != 0 || !st.vlog.hold_l0);
            let Some(plan) = plan else {
                self.state_cv.wait_for(&mut st, Duration::from_millis(200));
                continue;
            };
            plan.set_being_compacted(true);
            st.compacting += 1;
            drop(st);
            let t = Instant::now();
            let res = self.run_compaction(&plan);
            st = self.state.lock();
            st.compacting -= 1;
            plan.set_being_compacted(false);
            match res {
                Ok((edit, outputs)) => {
                    if let Err(e) = self.install_compaction(&mut st, &plan, edit, &outputs, t) {
                        self.note_bg_error(&mut st, &e);
                    }
                }
                Err(Error::Closed) => return,
                Err(e) => {
                    self.note_bg_error(&mut st, &e);
                    self.state_cv.wait_for(&mut st, Duration::from_millis(500));
                }
            }
        }
    }

    /// Installs a finished compaction of `plan` (its `edit` and `outputs`, started at `t`)
    /// and counts it; on an error the outputs are dropped and nothing changed.
    fn install_compaction(
        &self,
        st: &mut State,
        plan: &Plan,
        edit: VersionEdit,
        outputs: &[Arc<FileMeta>],
        t: Instant,
    ) -> Result<()> {
        let written: u64 = outputs.iter().map(|m| m.desc.size).sum();
        if let Err(e) = self.log_and_apply(st, edit, outputs) {
            for m in outputs {
                m.mark_obsolete();
            }
            return Err(e);
        }
        tracing::debug!(
            level = plan.level,
            output_level = plan.output_level,
            input_files = plan.inputs.len(),
            input_bytes = plan.inputs.iter().map(|f| f.desc.size).sum::<u64>(),
            next_files = plan.next_inputs.len(),
            next_bytes = plan.next_inputs.iter().map(|f| f.desc.size).sum::<u64>(),
            output_bytes = written,
            trivial_move = plan.trivial_move,
            score = plan.score,
            "compaction finished"
        );
        if plan.trivial_move {
            Counters::add(&self.counters.trivial_moves, "nokv_trivial_moves_total", 1);
        } else {
            for f in plan.all_inputs() {
                f.mark_obsolete();
            }
            let read: u64 = plan.all_inputs().map(|f| f.desc.size).sum();
            Counters::add(&self.counters.compactions, "nokv_compactions_total", 1);
            Counters::add(
                &self.counters.compaction_bytes_read,
                "nokv_compaction_bytes_read_total",
                read,
            );
            Counters::add(
                &self.counters.compaction_bytes_written,
                "nokv_compaction_bytes_written_total",
                written,
            );
            Counters::add(
                &self.counters.compaction_micros,
                "nokv_compaction_micros_total",
                t.elapsed().as_micros() as u64,
            );
        }
        self.state_cv.notify_all();
        Ok(())
    }

    /// Runs the steps of a full compaction ([`Db::compact_full`]) on the caller's thread,
    /// beside the background compactions.
    fn run_full_compaction(&self) -> Result<()> {
        let last = self.opts.num_levels - 1;
        let mut bottom_done = false;
        // Bounded: each step empties a level above the last or rewrites the last (once);
        // levels that new flushes fill meanwhile are followed a bounded number of times.
        for _ in 0..self.opts.num_levels * 4 {
            let mut st = self.state.lock();
            let plan = loop {
                self.check_open()?;
                if st.shutting_down {
                    return Err(Error::Closed);
                }
                // Alone: once the background compactions in flight are done.
                let step = match st.compacting {
                    0 => compaction::pick_full(&st.version, bottom_done),
                    _ => FullStep::Busy,
                };
                match step {
                    FullStep::Done => return Ok(()),
                    // A value-log GC commit waits for L0 to be still (see `vlog_gc`).
                    FullStep::Plan(p) if p.level != 0 || !st.vlog.hold_l0 => break p,
                    _ => {
                        self.state_cv.wait_for(&mut st, Duration::from_millis(100));
                    }
                }
            };
            bottom_done |= plan.level == last;
            plan.set_being_compacted(true);
            st.compacting += 1;
            st.full_compaction = true;
            drop(st);
            let t = Instant::now();
            let res = self.run_compaction(&plan);
            let mut st = self.state.lock();
            st.compacting -= 1;
            st.full_compaction = false;
            plan.set_being_compacted(false);
            self.state_cv.notify_all();
            let installed = res.and_then(|(edit, outputs)| {
                self.install_compaction(&mut st, &plan, edit, &outputs, t)
            });
            if let Err(e) = installed {
                if !matches!(e, Error::Closed) {
                    self.note_bg_error(&mut st, &e);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn run_compaction(&self, plan: &Plan) -> Result<(VersionEdit, Vec<Arc<FileMeta>>)> {
        let mut edit = VersionEdit::default();
        for f in &plan.inputs {
            edit.deleted.push((plan.level, f.desc.number));
        }
        for f in &plan.next_inputs {
            edit.deleted.push((plan.output_level, f.desc.number));
        }
        if plan.trivial_move {
            let f = &plan.inputs[0];
            edit.added.push((plan.output_level, f.desc.clone()));
            return Ok((edit, vec![f.clone()]));
        }
        // Input files that a range tombstone of the inputs deletes whole are dropped unread.
        let unread = dropped_unread(plan, &self.gc_policy());
        let read = |f: &&Arc<FileMeta>| !unread.contains(&f.desc.number);
        let mut children: Vec<Box<dyn InternalIterator>> = Vec::new();
        if plan.level == 0 {
            for f in plan.inputs.iter().filter(read) {
                children.push(Box::new(f.table.iter(BlockRead::NoFill)));
            }
        } else {
            let inputs = plan.inputs.iter().filter(read).cloned().collect();
            children.push(Box::new(LevelIterator::new(inputs, BlockRead::NoFill)));
        }
        let next_inputs: Vec<Arc<FileMeta>> =
            plan.next_inputs.iter().filter(read).cloned().collect();
        if !next_inputs.is_empty() {
            children.push(Box::new(LevelIterator::new(next_inputs, BlockRead::NoFill)));
        }
        let settings = JobSettings::new(
            &self.opts,
            plan.output_level,
            self.dir.clone(),
            self.fs.clone(),
            self.next_file_number.clone(),
            self.cache.clone(),
        );
        let boundaries = compaction::next_level_boundaries(&self.state.lock().version, plan);
        let txn_safe_point = self.txn_safe_point.load(Ordering::Acquire);
        let mut job = MergeJob::new(
            Box::new(MergingIterator::new(children)),
            settings,
            self.smallest_snapshot(),
            self.safe_point(),
            plan.bottommost,
        )
        .with_txn_gc(txn_safe_point)
        .with_boundaries(boundaries)
        .with_range_tombstones(input_range_dels(plan, &unread), self.snapshots.all());
        self.drive(&mut job)?;
        let (records, values) = (job.entries_txn_collected, job.values_txn_collected);
        let out = job.finish_all()?;
        self.note_separated(out.separated);
        if records + values > 0 {
            // Reads below it may miss what this compaction dropped: persist it with the edit.
            edit.txn_safe_point = Some(txn_safe_point);
            let c = &self.counters;
            Counters::add(
                &c.txn_records_collected,
                "nokv_txn_gc_records_total",
                records,
            );
            Counters::add(&c.txn_values_collected, "nokv_txn_gc_values_total", values);
        }
        edit.segments_added = out.segments;
        edit.discards = out.discards.into_iter().collect();
        let outputs: Vec<Arc<FileMeta>> = out
            .tables
            .into_iter()
            .map(|o| Arc::new(FileMeta::new(o.desc, o.table, self.fs.clone(), o.path)))
            .collect();
        if !unread.is_empty() {
            // Values the dropped files pointed to are garbage now, though no one read them.
            let mut discards: BTreeMap<u64, u64> = edit.discards.iter().copied().collect();
            for f in plan.all_inputs().filter(|f| !read(f)) {
                for (segment, bytes) in &f.table.properties().vlog_refs {
                    *discards.entry(*segment).or_insert(0) += bytes;
                }
            }
            edit.discards = discards.into_iter().collect();
            let c = &self.counters;
            let bytes = plan
                .all_inputs()
                .filter(|f| !read(f))
                .map(|f| f.desc.size)
                .sum();
            Counters::add(
                &c.range_del_files_dropped,
                "nokv_range_del_files_dropped_total",
                unread.len() as u64,
            );
            Counters::add(
                &c.range_del_bytes_dropped,
                "nokv_range_del_bytes_dropped_total",
                bytes,
            );
        }
        for m in &outputs {
            edit.added.push((plan.output_level, m.desc.clone()));
        }
        Ok((edit, outputs))
    }

    fn stats(&self) -> Stats {
        let c = &self.counters;
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let st = self.state.lock();
        let levels: Vec<LevelStats> = st
            .version
            .levels
            .iter()
            .map(|files| LevelStats {
                files: files.len(),
                bytes: files.iter().map(|f| f.desc.size).sum(),
            })
            .collect();
        let base_level = compaction::level_targets(&st.version, &self.opts).base_level;
        let memtable_bytes = (st.mem.approximate_bytes()
            + st.imms
                .iter()
                .map(|i| i.mem.approximate_bytes())
                .sum::<usize>()) as u64;
        let immutable_memtables = st.imms.len();
        drop(st);
        let wal_segments = self.write.try_lock().map_or(0, |ws| ws.wal.live_segments());
        let user_bytes = ld(&c.user_bytes);
        let sst_written = ld(&c.flush_bytes) + ld(&c.compaction_bytes_written);
        let mut stats = Stats {
            user_bytes,
            user_writes: ld(&c.user_writes),
            wal_bytes: ld(&c.wal_bytes),
            wal_syncs: ld(&c.wal_syncs),
            wal_groups: ld(&c.wal_groups),
            wal_group_writes: ld(&c.wal_group_writes),
            flushes: ld(&c.flushes),
            flush_bytes: ld(&c.flush_bytes),
            flush_micros: ld(&c.flush_micros),
            compactions: ld(&c.compactions),
            trivial_moves: ld(&c.trivial_moves),
            compaction_bytes_read: ld(&c.compaction_bytes_read),
            compaction_bytes_written: ld(&c.compaction_bytes_written),
            compaction_micros: ld(&c.compaction_micros),
            stall_micros: ld(&c.stall_micros),
            slowdowns: ld(&c.slowdowns),
            background_errors: ld(&c.background_errors),
            write_amplification: if user_bytes == 0 {
                0.0
            } else {
                sst_written as f64 / user_bytes as f64
            },
            levels,
            base_level,
            block_cache_hits: self.cache.as_ref().map_or(0, |c| c.hits()),
            block_cache_misses: self.cache.as_ref().map_or(0, |c| c.misses()),
            block_cache_bytes: self.cache.as_ref().map_or(0, |c| c.usage_bytes() as u64),
            memtable_bytes,
            immutable_memtables,
            wal_segments,
            last_sequence: self.last_seq.load(Ordering::Acquire),
            range_del_files_dropped: ld(&c.range_del_files_dropped),
            txn_records_collected: ld(&c.txn_records_collected),
            txn_values_collected: ld(&c.txn_values_collected),
            range_del_bytes_dropped: ld(&c.range_del_bytes_dropped),
            ..Default::default()
        };
        self.fill_vlog_stats(&mut stats);
        stats
    }

    /// Syncs the WAL, stops and joins background threads, releases the lock. Idempotent.
    fn shutdown(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let sync_res = {
            let mut ws = self.write.lock();
            if self.is_poisoned.load(Ordering::Acquire) {
                Ok(())
            } else {
                self.sync_logs(&mut ws)
            }
        };
        self.state.lock().shutting_down = true;
        self.state_cv.notify_all();
        self.log_syncer.stop();
        let threads = std::mem::take(&mut *self.threads.lock());
        for t in threads {
            if t.join().is_err() {
                tracing::error!("a background thread panicked");
            }
        }
        // Kept segment files are orphans: delete them rather than leave them to the next open.
        let recycler = self.state.lock().vlog.recycler.clone();
        for p in recycler.map(|r| r.close()).unwrap_or_default() {
            if let Err(e) = self.fs.remove_file(&p) {
                tracing::warn!(path = %p.display(), error = %e, "could not delete a kept value-log segment");
            }
        }
        self.lock.lock().take();
        sync_res
    }
}

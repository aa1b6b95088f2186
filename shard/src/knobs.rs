//! Test-only knobs, read from the environment in debug builds only (release builds
//! ignore the variables). System tests use them to make rare states happen on demand.
//!
//! | variable | effect |
//! |---|---|
//! | `NOKV_DEBUG_INLINE_ENGINE_IO=wal` | each round's WAL append runs on the executor thread: a negative control of the blocking-IO assertion (a debug server must abort at its first round) |
//! | `NOKV_DEBUG_INLINE_ENGINE_IO=reads` | reads run on the executor thread with every storage tier: the other negative control (a debug server must abort on a block-cache miss) |
//! | `NOKV_DEBUG_WRITE_BUFFER_BYTES=n` | the engines' memtable size (at least 65536) |
//! | `NOKV_DEBUG_MAX_IMMUTABLE_MEMTABLES=n` | frozen memtables before writes stop |
//! | `NOKV_DEBUG_HOLD_FLUSH_WHILE=path` | the engines start no flush while `path` exists |
//! | `NOKV_DEBUG_CORRUPT_CHECK_HASH_WHILE=path` | while `path` exists, this store reports a wrong hash for every consistency check: the negative control of the check (its leader must report a mismatch) |
//! | `NOKV_DEBUG_NO_SNAPSHOT_SHIPPING=1` | raft snapshot messages are dropped instead of shipped (a lagging replica cannot catch up: the negative control of the snapshot test) |
//! | `NOKV_DEBUG_RAFT_CACHED_ENTRIES=n` | applied raft entries kept per region (default 1024; a leader keeps up to 4x for lagging replicas), so tests need fewer writes to make a replica need a snapshot |
//! | `NOKV_DEBUG_ABORT_AFTER_MOVE_IN=1` | `NOKV.REGION MOVE` aborts the process once the target core holds the region durably, before the source core deleted its copy: the crash window a restart must resolve (the region on two cores) |
//! | `NOKV_DEBUG_MERGE_DELETE_SOURCE_EARLY=1` | a merged-away region's descriptor is deleted apart from the batch that widens its target: the negative control of the merge crash tests (a SIGKILL leaves a gap) |
//! | `NOKV_DEBUG_MERGE_STOP_AFTER_PREPARE=1` | `NOKV.REGION MERGE` answers an error once the source applied its prepare, without proposing the commit (as when the commit is not applied in time): the next split check must finish the merge |
//! | `NOKV_DEBUG_TXN_NO_LATCHES=1` | transactional requests take no latches: the negative control of the latch test (two prewrites of one key may then both succeed) |
//! | `NOKV_DEBUG_NET_FAULTS=path` | the store-to-store transport applies the partitions, drops, duplicates and delays written in `path`, re-read every 50 ms (`transport/faults.rs` has the rules) |
//! | `NOKV_DEBUG_READ_WITHOUT_QUORUM=1` | leaders serve reads from their own state without a lease or a ReadIndex round and keep leading without a quorum: the negative control of the linearizability suite (a cut-off leader serves stale reads) |
//! | `NOKV_DEBUG_MULTIKEY_SPLIT=1` | MSET / MSETNX / DEL / EXISTS and MULTI blocks over several regions are split into independent per-region commands instead of the atomic protocol (`nokv_gateway::atomic`): the negative control of the multi-region atomicity tests (readers then see one region's part without the others') |
//! | `NOKV_DEBUG_HOLD_DISK_READS_WHILE=path` | a read that needs disk IO waits on its core while `path` exists, between its region check and its run: the window in which a move or merge may delete the region's copy under it |
//! | `NOKV_DEBUG_READ_UNPINNED=1` | a read that needs disk IO reads the engine as of when it runs, not as of its region check: the negative control of the move-under-a-read test (it then reads the deleted copy: nil) |
//! | `NOKV_DEBUG_RAFT_TO_CORE=n` | every raft message to another store is addressed to its core `n`, whatever the placement (the receivers must hand it to the right core) |

use std::path::PathBuf;

/// The knobs in effect (all off in release builds).
#[derive(Debug, Clone, Default)]
pub struct Knobs {
    /// Run the round's WAL append inline on the executor (negative control).
    pub inline_wal: bool,
    /// Run reads inline on the executor with every tier (negative control).
    pub inline_reads: bool,
    /// Engine `write_buffer_bytes` override.
    pub write_buffer_bytes: Option<usize>,
    /// Engine `max_immutable_memtables` override.
    pub max_immutable_memtables: Option<usize>,
    /// Hold flushes while this file exists.
    pub hold_flush_while: Option<PathBuf>,
    /// Address every outgoing raft message to this core of its store.
    pub raft_to_core: Option<u32>,
    /// Report wrong consistency-check hashes while this file exists (negative control).
    pub corrupt_check_hash_while: Option<PathBuf>,
    /// Drop raft snapshot messages instead of shipping them (negative control).
    pub no_snapshot_shipping: bool,
    /// Applied raft entries kept per region in memory.
    pub raft_cached_entries: Option<usize>,
    /// Abort a region move between the target's durable copy and the source's deletion.
    pub abort_after_move_in: bool,
    /// Delete a merged-away region's descriptor at once, apart from the merge's own
    /// batch (negative control: a crash then leaves its slots to no region).
    pub merge_delete_source_early: bool,
    /// A requested merge stops after its prepare (the next split check finishes it).
    pub merge_stop_after_prepare: bool,
    /// Transactional requests take no latches (negative control).
    pub txn_no_latches: bool,
    /// Prewrites skip the write-conflict check (negative control of the bank's checker:
    /// lost updates).
    pub txn_skip_write_conflicts: bool,
    /// Injected network faults: the rules file the transport watches.
    pub net_faults: Option<PathBuf>,
    /// Leaders read without a lease or ReadIndex and ignore a lost quorum (negative
    /// control: stale reads).
    pub reads_without_quorum: bool,
    /// Multi-region MSET / MSETNX / DEL split per region, not atomic (negative control).
    pub multikey_split: bool,
    /// Disk reads wait between their region check and their run while this file exists.
    pub hold_disk_reads_while: Option<PathBuf>,
    /// Disk reads are not pinned to a snapshot at their region check (negative control).
    pub read_unpinned: bool,
}

impl Knobs {
    /// Reads the variables (debug builds); every knob off in release builds.
    pub fn from_env() -> Knobs {
        #[cfg(debug_assertions)]
        {
            let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
            let knobs = Knobs {
                inline_wal: var("NOKV_DEBUG_INLINE_ENGINE_IO").is_some_and(|v| v == "wal"),
                inline_reads: var("NOKV_DEBUG_INLINE_ENGINE_IO").is_some_and(|v| v == "reads"),
                write_buffer_bytes: var("NOKV_DEBUG_WRITE_BUFFER_BYTES")
                    .and_then(|v| v.parse().ok()),
                max_immutable_memtables: var("NOKV_DEBUG_MAX_IMMUTABLE_MEMTABLES")
                    .and_then(|v| v.parse().ok()),
                hold_flush_while: var("NOKV_DEBUG_HOLD_FLUSH_WHILE").map(PathBuf::from),
                raft_to_core: var("NOKV_DEBUG_RAFT_TO_CORE").and_then(|v| v.parse().ok()),
                corrupt_check_hash_while: var("NOKV_DEBUG_CORRUPT_CHECK_HASH_WHILE")
                    .map(PathBuf::from),
                no_snapshot_shipping: var("NOKV_DEBUG_NO_SNAPSHOT_SHIPPING").is_some(),
                raft_cached_entries: var("NOKV_DEBUG_RAFT_CACHED_ENTRIES")
                    .and_then(|v| v.parse().ok())
                    .filter(|&n: &usize| n > 0),
                abort_after_move_in: var("NOKV_DEBUG_ABORT_AFTER_MOVE_IN").is_some(),
                merge_delete_source_early: var("NOKV_DEBUG_MERGE_DELETE_SOURCE_EARLY").is_some(),
                merge_stop_after_prepare: var("NOKV_DEBUG_MERGE_STOP_AFTER_PREPARE").is_some(),
                txn_no_latches: var("NOKV_DEBUG_TXN_NO_LATCHES").is_some(),
                txn_skip_write_conflicts: var("NOKV_DEBUG_TXN_SKIP_WRITE_CONFLICTS").is_some(),
                net_faults: var("NOKV_DEBUG_NET_FAULTS").map(PathBuf::from),
                reads_without_quorum: var("NOKV_DEBUG_READ_WITHOUT_QUORUM").is_some(),
                multikey_split: var("NOKV_DEBUG_MULTIKEY_SPLIT").is_some(),
                hold_disk_reads_while: var("NOKV_DEBUG_HOLD_DISK_READS_WHILE").map(PathBuf::from),
                read_unpinned: var("NOKV_DEBUG_READ_UNPINNED").is_some(),
            };
            if knobs.inline_wal
                || knobs.inline_reads
                || knobs.write_buffer_bytes.is_some()
                || knobs.max_immutable_memtables.is_some()
                || knobs.hold_flush_while.is_some()
                || knobs.raft_to_core.is_some()
                || knobs.corrupt_check_hash_while.is_some()
                || knobs.no_snapshot_shipping
                || knobs.raft_cached_entries.is_some()
                || knobs.abort_after_move_in
                || knobs.merge_delete_source_early
                || knobs.merge_stop_after_prepare
                || knobs.txn_no_latches
                || knobs.txn_skip_write_conflicts
                || knobs.net_faults.is_some()
                || knobs.reads_without_quorum
                || knobs.multikey_split
                || knobs.hold_disk_reads_while.is_some()
                || knobs.read_unpinned
            {
                tracing::warn!(?knobs, "debug knobs in effect (tests only)");
            }
            knobs
        }
        #[cfg(not(debug_assertions))]
        Knobs::default()
    }

    /// Applies the engine overrides to `opts`.
    pub fn engine(&self, opts: &mut nokv::Options) {
        if let Some(n) = self.write_buffer_bytes {
            opts.write_buffer_bytes = n;
        }
        if let Some(n) = self.max_immutable_memtables {
            opts.max_immutable_memtables = n;
        }
        if let Some(path) = self.hold_flush_while.clone() {
            // Called by the engine's flush thread (never an executor thread).
            opts.test_hold_flush = Some(std::sync::Arc::new(move || path.exists()));
        }
    }
}

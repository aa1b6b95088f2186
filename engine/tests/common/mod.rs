//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use std::sync::Arc;

use nokv::fs::{FaultFs, FaultRule, FileSystem, Op, PowerLoss};
use nokv::{Db, IoBackend, Options};

/// The IO backend under test: `NOKV_TEST_IO_BACKEND=uring` runs the suite on io_uring.
pub fn backend() -> IoBackend {
    match std::env::var("NOKV_TEST_IO_BACKEND").as_deref() {
        Ok("uring") => IoBackend::Uring,
        _ => IoBackend::Std,
    }
}

/// Options with tiny buffers so that flushes, rotations and compactions happen in small tests.
pub fn small_options() -> Options {
    Options {
        write_buffer_bytes: 64 << 10,
        wal_segment_bytes: 256 << 10,
        max_batch_bytes: 128 << 10,
        max_value_bytes: 64 << 10,
        target_file_bytes: 64 << 10,
        level_base_bytes: 256 << 10,
        l0_compaction_trigger: 2,
        l0_slowdown_trigger: 8,
        l0_stop_trigger: 12,
        block_cache_bytes: 1 << 20,
        wal_recycle_segments: 2,
        manifest_rewrite_bytes: 16 << 10,
        io_backend: backend(),
        ..Options::default()
    }
}

/// `small_options` on the given in-memory fault filesystem.
pub fn fault_options(fs: &FaultFs) -> Options {
    let dynfs: Arc<dyn FileSystem> = Arc::new(fs.clone());
    Options {
        fs: Some(dynfs),
        ..small_options()
    }
}

/// Simulates a crash of the process owning `db`: from this instant nothing it does reaches
/// the disk; with `power`, unsynced data and directory entries are lost too.
pub fn crash(fs: &FaultFs, db: Db, power: Option<PowerLoss>) {
    freeze(fs, power);
    drop(db);
    thaw(fs);
}

/// The crash instant: every later operation of the dying process fails.
pub fn freeze(fs: &FaultFs, power: Option<PowerLoss>) {
    for op in [
        Op::Open,
        Op::Write,
        Op::Sync,
        Op::Rename,
        Op::Truncate,
        Op::Remove,
    ] {
        fs.add_rule(FaultRule::after_n(op, 0));
    }
    match power {
        Some(p) => fs.power_loss(p),
        None => fs.crash_process(),
    }
}

/// "Reboot": once every handle of the dead process is gone, the disk works again.
pub fn thaw(fs: &FaultFs) {
    fs.clear_rules();
}

/// Deterministic value for key `k` at version `v`, `len` bytes.
pub fn value_for(k: u64, v: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x = k.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ v.wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Key bytes for integer `k`.
pub fn key(k: u64) -> Vec<u8> {
    format!("key{k:08}").into_bytes()
}

/// Every (key, value) pair, by a forward scan.
pub fn scan_all(db: &Db) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut it = db.iter(Default::default()).expect("iterator");
    it.seek_to_first();
    let mut out = Vec::new();
    while it.valid() {
        out.push((it.key().to_vec(), it.value().to_vec()));
        it.next();
    }
    it.status().expect("scan status");
    out
}

/// Rounds a crash test runs: `NOKV_CRASH_ROUNDS` when set, else `default`.
pub fn crash_rounds(default: u64) -> u64 {
    std::env::var("NOKV_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One batch of a crash-test writer: (key, Some(value) | None for delete).
pub type Batch = Vec<(u64, Option<Vec<u8>>)>;

/// What one crash-test writer did: its acknowledged batches and the one in flight.
#[derive(Default)]
pub struct WriterLog {
    /// Batches whose write returned Ok, in order.
    pub acked: Vec<Batch>,
    /// The batch being written when the crash came, if any.
    pub in_flight: Option<Batch>,
}

/// Applies `b` to the model `state`.
pub fn apply(state: &mut std::collections::BTreeMap<u64, Vec<u8>>, b: &Batch) {
    for (k, v) in b {
        match v {
            Some(v) => state.insert(*k, v.clone()),
            None => state.remove(k),
        };
    }
}

/// Every (key, value) of an iterator, walked forward or backward (returned in key order).
pub fn walk(mut it: nokv::DbIterator, reverse: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    if reverse {
        it.seek_to_last();
        while it.valid() {
            out.push((it.key().to_vec(), it.value().to_vec()));
            it.prev();
        }
        out.reverse();
    } else {
        it.seek_to_first();
        while it.valid() {
            out.push((it.key().to_vec(), it.value().to_vec()));
            it.next();
        }
    }
    it.status().expect("iter status");
    out
}

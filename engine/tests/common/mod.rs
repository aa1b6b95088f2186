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
pub struct WriterLog<B = Batch> {
    /// Batches whose write returned Ok, in order.
    pub acked: Vec<B>,
    /// The batch being written when the crash came, if any.
    pub in_flight: Option<B>,
}

impl<B> Default for WriterLog<B> {
    fn default() -> Self {
        WriterLog {
            acked: Vec::new(),
            in_flight: None,
        }
    }
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

/// Writer `w`'s keys (`key(w * 10_000 + i)` for i < `n`) as the database has them, by
/// gets; a bounded scan over the same range must agree.
pub fn read_writer_keys(
    db: &Db,
    w: usize,
    n: u64,
) -> Result<std::collections::BTreeMap<u64, Vec<u8>>, String> {
    let lo = w as u64 * 10_000;
    let mut actual = std::collections::BTreeMap::new();
    for k in lo..lo + n {
        if let Some(v) = db.get(&key(k)).map_err(|e| format!("get failed: {e}"))? {
            actual.insert(k, v);
        }
    }
    let mut scanned = std::collections::BTreeMap::new();
    let mut it = db
        .iter(nokv::ReadOptions {
            lower_bound: Some(key(lo)),
            upper_bound: Some(key(lo + n)),
            ..Default::default()
        })
        .map_err(|e| e.to_string())?;
    it.seek_to_first();
    while it.valid() {
        let k: u64 = std::str::from_utf8(&it.key()[3..])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("bad key")?;
        scanned.insert(k, it.value().to_vec());
        it.next();
    }
    it.status().map_err(|e| format!("scan failed: {e}"))?;
    if scanned != actual {
        return Err(format!("writer {w}: scan and gets disagree"));
    }
    Ok(actual)
}

/// `Sync` check: `actual` (a writer's keys after recovery) holds every acknowledged batch,
/// and the batch in flight entirely or not at all.
pub fn check_acked(
    actual: &std::collections::BTreeMap<u64, Vec<u8>>,
    w: usize,
    log: &WriterLog,
) -> Result<(), String> {
    let mut expected = std::collections::BTreeMap::new();
    for b in &log.acked {
        apply(&mut expected, b);
    }
    let mut with_inflight = expected.clone();
    if let Some(b) = &log.in_flight {
        apply(&mut with_inflight, b);
    }
    if *actual == expected || *actual == with_inflight {
        return Ok(());
    }
    let lost = expected
        .iter()
        .filter(|(k, v)| actual.get(k) != Some(v) && with_inflight.get(k) != actual.get(k))
        .count();
    Err(format!(
        "writer {w}: {} acked batches; {lost} keys lost or wrong (state matches neither the acked prefix nor it plus the in-flight batch)",
        log.acked.len()
    ))
}

/// `Relaxed` check: `actual` equals some prefix of the writer's batches (acked, then in flight).
pub fn check_prefix(
    actual: &std::collections::BTreeMap<u64, Vec<u8>>,
    w: usize,
    log: &WriterLog,
) -> Result<(), String> {
    let mut state = std::collections::BTreeMap::new();
    if state == *actual {
        return Ok(());
    }
    for b in log.acked.iter().chain(log.in_flight.iter()) {
        apply(&mut state, b);
        if state == *actual {
            return Ok(());
        }
    }
    Err(format!(
        "writer {w}: recovered state is no prefix of its {} batches (a hole or a partial batch)",
        log.acked.len()
    ))
}

/// A `WriteBatch` holding `b`.
pub fn write_batch(b: &Batch) -> nokv::WriteBatch {
    let mut wb = nokv::WriteBatch::new();
    for (k, v) in b {
        match v {
            Some(v) => wb.put(&key(*k), v),
            None => wb.delete(&key(*k)),
        };
    }
    wb
}

/// Crash-test writers: threads committing batches until stopped, each logging a batch
/// as in flight before writing it and as acknowledged once the write returns Ok.
pub struct CrashWriters<B = Batch> {
    /// One log per writer.
    pub logs: Vec<Arc<std::sync::Mutex<WriterLog<B>>>>,
    acked: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl<B: Clone + Send + 'static> CrashWriters<B> {
    /// Starts `writers` threads on `db`; writer `w` writes up to `max_batches` batches
    /// built by `next(db, rng, w, version)` (its rng seeded from `seed` and `w`) and stops
    /// at the first failed write.
    pub fn start<F>(db: &Db, writers: usize, seed: u64, max_batches: u64, next: F) -> Self
    where
        F: Fn(&Db, &mut rand::rngs::StdRng, usize, u64) -> (B, nokv::WriteBatch)
            + Send
            + Sync
            + 'static,
    {
        use rand::SeedableRng;
        use std::sync::atomic::Ordering;
        let next = Arc::new(next);
        let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let logs: Vec<_> = (0..writers)
            .map(|_| Arc::new(std::sync::Mutex::new(WriterLog::default())))
            .collect();
        let handles = logs
            .iter()
            .enumerate()
            .map(|(w, log)| {
                let (db, log, acked, stop, next) = (
                    db.clone(),
                    log.clone(),
                    acked.clone(),
                    stop.clone(),
                    next.clone(),
                );
                let mut rng =
                    rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(w as u64));
                std::thread::spawn(move || {
                    for version in 1..max_batches {
                        if stop.load(Ordering::Acquire) {
                            break;
                        }
                        let (b, wb) = next(&db, &mut rng, w, version);
                        log.lock().expect("log").in_flight = Some(b.clone());
                        if db.write(&wb, &nokv::WriteOptions::default()).is_err() {
                            break;
                        }
                        let mut l = log.lock().expect("log");
                        l.in_flight = None;
                        l.acked.push(b);
                        drop(l);
                        acked.fetch_add(1, Ordering::AcqRel);
                    }
                })
            })
            .collect();
        CrashWriters {
            logs,
            acked,
            stop,
            handles,
        }
    }

    /// Batches acknowledged so far, all writers together.
    pub fn acked(&self) -> usize {
        self.acked.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits until `done()` holds, every writer has finished, or 20 seconds have passed.
    pub fn wait_until(&self, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !done()
            && std::time::Instant::now() < deadline
            && !self.handles.iter().all(|h| h.is_finished())
        {
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
    }

    /// Stops the writers (call after the crash froze the file system) and waits for them.
    pub fn stop(&mut self) -> Result<(), String> {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        for h in self.handles.drain(..) {
            h.join().map_err(|_| "writer panicked".to_string())?;
        }
        Ok(())
    }
}

/// Cuts the power under `db` while `writers` run: freezes `fs` (tearing the last unsynced
/// page half the time), stops the writers, drops the handle and thaws `fs` for the reopen.
pub fn power_cut<B: Clone + Send + 'static>(
    fs: &FaultFs,
    db: Db,
    writers: &mut CrashWriters<B>,
    rng: &mut impl rand::Rng,
    seed: u64,
) -> Result<(), String> {
    freeze(
        fs,
        Some(PowerLoss {
            tear_last_unsynced_page: rng.gen_bool(0.5),
            seed,
        }),
    );
    writers.stop()?;
    drop(db);
    thaw(fs);
    Ok(())
}

/// A negative control: runs `round` for the seeds in `seeds` with the guarded property
/// broken, prints what the checker reported, and fails unless it reported something.
pub fn expect_detected<T>(
    what: &str,
    seeds: std::ops::Range<u64>,
    round: impl Fn(u64) -> Result<T, String>,
) {
    let n = seeds.end - seeds.start;
    let found: Vec<String> = seeds
        .filter_map(|seed| round(seed).err().map(|e| format!("seed {seed}: {e}")))
        .collect();
    println!("{what}: {} of {n} rounds detected", found.len());
    for f in &found {
        println!("  {f}");
    }
    assert!(!found.is_empty(), "the checker missed it: {what}");
}

/// A Percolator reader of `db`'s ordered-KV namespace.
pub fn txn_reader(db: &Db) -> nokv::txn::DbReader<'_> {
    nokv::txn::DbReader::new(db, nokv::NS_KV)
}

/// Writes a Percolator operation's batch (nothing when it is empty).
pub fn apply_txn(db: &Db, b: &nokv::WriteBatch) {
    if !b.is_empty() {
        let wo = nokv::WriteOptions {
            durability: Some(nokv::Durability::Relaxed),
        };
        db.write(b, &wo).expect("write");
    }
}
